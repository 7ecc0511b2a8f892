"""Write requirements.txt from ``pip freeze`` of a fresh ``pip install ".[test]"``.

Run by scripts/lock.sh with the fresh virtualenv's python (which has ``packaging``: matplotlib,
pytest and tensorboard require it): ``python scripts/lock.py PYPROJECT < freeze > OUT``, the
freeze being ``pip freeze --all``.

The freeze lines other than the project's own (``name==version``; anything else is an error,
so no ``-e`` or local path reaches the lock) get PEP 503 names, are sorted and split in two
marked sections: the runtime closure of pyproject's ``dependencies`` (walked through the
installed packages' metadata, extras followed, markers evaluated for this interpreter as pip
evaluates them) and the rest, which the ``[test]`` extra brings. A frozen package that neither
closure reaches is an error, except the virtualenv's own pip, setuptools and wheel, which are
left out unless the closure needs them.
"""

import importlib.metadata as md
import platform
import re
import sys
import tomllib

from packaging.requirements import Requirement

RUNTIME_MARK = "# --- runtime: pyproject.toml's dependencies and everything they require"
TEST_MARK = "# --- test tools: the [test] extra and what it adds to the runtime"

# What `python -m venv` puts in every environment (pip freeze --all lists them): locked only
# where pyproject's closure needs them (tensorboard needs setuptools).
BOOTSTRAP = {"pip", "setuptools", "wheel"}

HEADER = """\
# The exact environment the test suite and the published records ran with: every package that
# `pip install ".[test]"` installed, at the version it installed (pyproject.toml keeps the lower
# bounds, for library users).
# Reproduce the published numbers: pip install -r requirements.txt && pip install -e . --no-deps
# Use the library: pip install .
# Made by scripts/lock.sh (a fresh virtualenv, pip install ".[test]", pip freeze, the project
# itself left out) with {python} on {system} {machine}; regenerate with the same command."""


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-``, ``_`` and ``.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _wanted(req: Requirement, extras: set[str]) -> bool:
    """Whether pip installs ``req`` for a package installed with ``extras``: its marker holds
    in this environment with no extra or with one of them (as pip evaluates it)."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in sorted(extras | {""}))


def closure(roots: list[str]) -> set[str]:
    """PEP 503 names of ``roots`` and of everything they require in this environment."""
    extras_of: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = normalize(req.name)
        new = {normalize(e) for e in req.extras}
        if name in extras_of and new <= extras_of[name]:
            continue
        extras = extras_of.setdefault(name, set()) | new
        extras_of[name] = extras
        for line in md.distribution(name).requires or []:
            sub = Requirement(line)
            if _wanted(sub, extras):
                todo.append(sub)
    return set(extras_of)


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        project = tomllib.load(f)["project"]
    pins: dict[str, str] = {}
    for line in sys.stdin.read().splitlines():
        if (m := re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*) *(==| @ )", line)) and normalize(
            m[1]
        ) == normalize(project["name"]):
            continue  # the project itself
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        if not m:
            sys.exit(f"lock.py: not a name==version line in pip freeze: {line!r}")
        pins[normalize(m[1])] = m[2]
    runtime = closure(project["dependencies"])
    everything = closure(project["dependencies"] + project["optional-dependencies"]["test"])
    for tool in BOOTSTRAP - everything:  # the virtualenv's own, unless something needs them
        pins.pop(tool, None)
    stray = sorted(set(pins) - everything)
    if stray:
        sys.exit(f"lock.py: installed but not required by pyproject.toml: {', '.join(stray)}")
    missing = sorted(everything - set(pins))
    if missing:
        sys.exit(f"lock.py: required but not in pip freeze: {', '.join(missing)}")
    out = [
        HEADER.format(
            python=f"{platform.python_implementation()} {platform.python_version()}",
            system=platform.system(),
            machine=platform.machine(),
        ),
        RUNTIME_MARK,
    ]
    out += [f"{n}=={pins[n]}" for n in sorted(pins) if n in runtime]
    out.append(TEST_MARK)
    out += [f"{n}=={pins[n]}" for n in sorted(pins) if n not in runtime]
    print("\n".join(out))


if __name__ == "__main__":
    main()
