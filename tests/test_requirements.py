"""requirements.txt, the exact environment scripts/lock.sh recorded, against pyproject.toml.

Offline, and without requiring the installed versions to be the locked ones (CI's
``pip install -e ".[test]"`` may resolve newer releases than the lock): the file is checked
against pyproject's bounds, and the dependency tree is read from the installed packages'
metadata (``importlib.metadata``), by PEP 503 name. ``packaging`` parses the requirements;
pytest requires it, so it is there wherever the suite runs (``test_closure_has_packaging``).

Markers, for "the lock names nothing pyproject does not need": a requirement counts as needed
when its marker can hold anywhere. ``extra`` comparisons are evaluated (with no extra and with
each extra the package was asked for, as pip does), every other comparison (Python version,
platform, ...) is taken as true; markers only combine comparisons with ``and``/``or``, so this
is an upper bound, and a lock made on one platform never fails it for naming what another
would not need. For "the lock is closed", markers are evaluated exactly, for this interpreter,
and only where the lock says it was made with this Python on this system.
"""

import importlib.metadata as md
import platform
import re
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_MARK = "# --- runtime:"
TEST_MARK = "# --- test tools:"
PIN = re.compile(r"([a-z0-9]+(?:-[a-z0-9]+)*)==(\S+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _lock() -> tuple[list[str], dict[str, dict[str, str]]]:
    """The header's comment lines and the pins of each section ("runtime", "test")."""
    header: list[str] = []
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.startswith(RUNTIME_MARK) or line.startswith(TEST_MARK):
            current = "runtime" if line.startswith(RUNTIME_MARK) else "test"
            assert current not in sections, f"two {current} sections"
            sections[current] = {}
        elif current is None:
            assert line.startswith("#"), f"requirements.txt: not a header comment: {line!r}"
            header.append(line)
        else:
            m = PIN.fullmatch(line)
            assert m, f"requirements.txt: not a normalised name==version line: {line!r}"
            sections[current][m[1]] = m[2]
    assert list(sections) == ["runtime", "test"], "requirements.txt: runtime then test section"
    return header, sections


def _pins() -> dict[str, str]:
    _, sections = _lock()
    return {**sections["runtime"], **sections["test"]}


def _roots(extra: str | None = None) -> list[Requirement]:
    project = _pyproject()
    lines = project["dependencies"]
    if extra:
        lines = lines + project["optional-dependencies"][extra]
    return [Requirement(r) for r in lines]


def _holds_somewhere(node, extra: str) -> bool:
    """A marker tree (packaging's ``Marker._markers``) with ``extra`` compared as given and
    every other comparison true; ``or`` binds loosest, as in packaging's own evaluation."""
    if isinstance(node, tuple):
        assert len(node) == 3, f"unexpected marker node {node!r}"
        lhs, op, rhs = node
        variables = [x for x in (lhs, rhs) if type(x).__name__ == "Variable"]
        if [v.value for v in variables] != ["extra"]:
            return True
        other = rhs if lhs is variables[0] else lhs
        if op.value == "==":
            return normalize(other.value) == extra
        if op.value == "!=":
            return normalize(other.value) != extra
        return True
    groups: list[list[bool]] = [[]]
    for item in node:
        if item == "or":
            groups.append([])
        elif item != "and":
            groups[-1].append(_holds_somewhere(item, extra))
    return any(all(g) for g in groups)


def may_need(marker: Marker | None, extras: set[str]) -> bool:
    """Whether a requirement with ``marker`` can be needed, anywhere, by a package installed
    with ``extras`` (the upper bound described at the top)."""
    return marker is None or any(_holds_somewhere(marker._markers, e) for e in extras | {""})


def needs_here(marker: Marker | None, extras: set[str]) -> bool:
    """Whether pip, on this interpreter, installs a requirement with ``marker``."""
    return marker is None or any(marker.evaluate({"extra": e}) for e in extras | {""})


def walk(
    roots: list[Requirement],
    wanted: Callable[[Marker | None, set[str]], bool],
    descend: Callable[[str], bool] = lambda name: True,
) -> tuple[dict[str, set[str]], list[Requirement]]:
    """Pyproject's dependency tree through the installed metadata: each reached name with the
    extras it was asked for, and every requirement followed. A name not installed here (one
    only another platform needs) is reached but not descended into; nor is one ``descend``
    refuses."""
    extras_of: dict[str, set[str]] = {}
    followed: list[Requirement] = []
    todo = [r for r in roots if wanted(r.marker, set())]
    while todo:
        req = todo.pop()
        followed.append(req)
        name = normalize(req.name)
        asked = {normalize(e) for e in req.extras}
        if name in extras_of and asked <= extras_of[name]:
            continue
        extras = extras_of[name] = extras_of.get(name, set()) | asked
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            continue
        if descend(name):
            todo += [sub for sub in map(Requirement, requires) if wanted(sub.marker, extras)]
    return extras_of, followed


def _installed_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _drift(pins: dict[str, str]) -> str:
    drift = [
        f"{n} {_installed_version(n)} (lock {v})"
        for n, v in sorted(pins.items())
        if _installed_version(n) not in (None, v)
    ]
    if not drift:
        return ""
    return "; installed here, not the locked version: " + ", ".join(drift)


def test_lock_format():
    header, sections = _lock()
    assert any("scripts/lock.sh" in line for line in header), "the header names the script"
    for name, pins in sections.items():
        assert list(pins) == sorted(pins), f"{name} section not sorted"
        for version in pins.values():
            Version(version)
    both = sorted(set(sections["runtime"]) & set(sections["test"]))
    assert not both, f"in both sections: {both}"
    assert normalize(_pyproject()["name"]) not in _pins(), "the project itself is locked"


def test_pyproject_dependencies_locked_within_bounds():
    _, sections = _lock()
    pins = _pins()
    runtime = {normalize(r.name) for r in _roots()}
    for req in _roots("test"):
        if not needs_here(req.marker, set()):
            continue
        name = normalize(req.name)
        where = sections["runtime"] if name in runtime else pins
        assert name in where, f"pyproject's {req} is not in requirements.txt" + (
            " (runtime section)" if name in runtime else ""
        )
        assert req.specifier.contains(where[name], prereleases=True), (
            f"requirements.txt locks {name}=={where[name]}, outside pyproject's {req}"
        )


def test_lock_names_nothing_pyproject_does_not_need():
    _, sections = _lock()
    pins = _pins()
    runtime, _ = walk(_roots(), may_need)
    everything, _ = walk(_roots("test"), may_need)
    extra = sorted(set(sections["runtime"]) - set(runtime))
    assert not extra, f"runtime section names what pyproject's dependencies do not need: {extra}"
    extra = sorted(set(pins) - set(everything))
    assert not extra, f"requirements.txt names what pyproject does not need: {extra}" + _drift(pins)


@pytest.mark.parametrize(
    "marker, extras, expected",
    [
        ('python_version < "3.9"', set(), True),
        ('sys_platform == "win32"', set(), True),
        ('extra == "tests-all"', set(), False),
        ('extra == "tests-all"', {"tests-all"}, True),
        ('extra == "Tests_All"', {"tests-all"}, True),
        ('"epath" == extra', {"epath"}, True),
        ('sys_platform == "win32" and extra == "x"', set(), False),
        ('extra == "x" or python_version < "3"', set(), True),
        ('python_version >= "3.11" and (extra == "x" or extra == "y")', {"y"}, True),
        ('python_version >= "3.11" and (extra == "x" or extra == "y")', {"z"}, False),
    ],
)
def test_may_need_is_exact_in_extras_and_true_elsewhere(marker, extras, expected):
    assert may_need(Marker(marker), extras) is expected


def test_closure_has_packaging():
    everything, _ = walk(_roots("test"), needs_here)
    assert "packaging" in everything


def test_lock_is_closed():
    """Each locked package installed here at its locked version has its metadata; what that
    requires (on this interpreter) must be locked too, at a version it accepts, so
    ``pip install -r requirements.txt`` adds nothing."""
    header, _ = _lock()
    made = re.search(r"with (\S+) (\d+\.\d+)\.\S+ on (\S+) ", " ".join(header))
    assert made, "the header names the Python and system the lock was made with"
    here = (
        platform.python_implementation(),
        ".".join(map(str, sys.version_info[:2])),
        platform.system(),
    )
    if made.groups() != here:
        pytest.skip(f"lock made with {' '.join(made.groups())}, this is {' '.join(here)}")
    pins = _pins()
    _, followed = walk(
        _roots("test"), needs_here, lambda name: _installed_version(name) == pins.get(name)
    )
    for req in followed:
        name = normalize(req.name)
        assert name in pins, f"{req} is required but not in requirements.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.txt locks {name}=={pins[name]}, outside {req}"
        )
