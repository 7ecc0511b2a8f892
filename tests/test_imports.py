"""The import graph of ``flows``: no module imports itself through others (no import circles),
and the packages import one another in one direction only (the layering below).

The graph is read from the source (``ast``), imports inside functions included, without
importing anything: ``from a.b import c`` is an edge to the module ``a.b.c`` when there is
one, else to ``a.b`` (a package's ``__init__``).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The repository's other top-level packages: the library never imports them.
OUTSIDE = ("experiments", "bench", "scripts", "tests", "configs")

# (importer, packages it never imports): ``flows.nn`` is ``flows.nn`` and its submodules.
# ``flows.testing`` (the cases the tests and the device check run) sits above the models.
ABOVE_MODELS = ("flows.train", "flows.evaluation", "flows.reporting", "flows.testing")
LAYERS = [
    (importer, ("flows.models", "flows.data", *ABOVE_MODELS))
    for importer in ("flows.nn", "flows.bijectors")
] + [
    ("flows.models", ABOVE_MODELS),
    # Evaluation and the sharding both use sit below the trainer, which imports them.
    ("flows.evaluation", ("flows.train",)),
    ("flows.sharding", ("flows.train", "flows.evaluation")),
    ("flows", OUTSIDE),
]


def _modules(root: pathlib.Path) -> dict[str, tuple[pathlib.Path, bool]]:
    """``{dotted name: (path, is a package)}`` of every module under ``root / 'flows'``."""
    modules = {}
    for path in sorted((root / "flows").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _imported(name: str, path: pathlib.Path, is_package: bool, modules) -> set[str]:
    """The dotted names module ``name`` imports anywhere in its source."""
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in modules else base)
    return out


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    """``{module: the names it imports}`` for every module of ``flows``."""
    modules = _modules(root)
    return {name: _imported(name, *where, modules) for name, where in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle ``[a, b, ..., a]`` among the graph's own modules, or None."""
    state = {}  # module -> 'open' while on the current path, 'done' after
    path = []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if target not in graph:
                continue  # outside the graph (numpy, jax, ...)
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_find_cycle_finds_a_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c", "numpy"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_the_graph_is_read_from_every_module_and_function_bodies():
    graph = import_graph()
    assert len(graph) > 40 and "flows.bijectors.coupling" in graph
    # An import inside a function counts (flows.ood imports digits_ood on an error path).
    assert "flows.data.digits_ood" in graph["flows.ood"]


def test_every_import_of_flows_names_one_of_its_modules():
    # A module removed or renamed must not be imported any more (an installed copy of
    # another checkout would otherwise answer the import).
    graph = import_graph()
    missing = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if _within(target, "flows") and target not in graph
    )
    assert not missing, "\n".join(missing)


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize(("importer", "forbidden"), LAYERS, ids=[i for i, _ in LAYERS])
def test_layering(importer, forbidden):
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if _within(module, importer)
        for target in targets
        if any(_within(target, package) for package in forbidden)
    )
    assert not wrong, "\n".join(wrong)
