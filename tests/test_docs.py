"""README and docs/: the generated tables equal what the committed records give, the Python
examples run as written, and no prose names a commit, a CPU or an issue."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _docs_module():
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "scripts" / "docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_docs(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docs.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_generated_tables_are_current():
    result = _run_docs("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_stale_table_is_found():
    docs = _docs_module()
    page = (ROOT / "docs" / "results.md").read_text()
    assert "<!-- generated: couplings -->" in page
    stale = page.replace("<!-- generated: couplings -->\n", "<!-- generated: couplings -->\nx\n")
    assert docs.regenerate(stale) == docs.regenerate(page) != stale


def test_every_generated_block_names_a_known_table():
    docs = _docs_module()
    for page in PAGES:
        for name in re.findall(r"<!-- generated: (\w+) -->", page.read_text()):
            assert name in docs.TABLES, f"{page.name}: unknown table {name}"


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if _python_blocks(p)], ids=lambda p: p.name)
def test_python_examples_run_as_written(page):
    for block in _python_blocks(page):
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        result = subprocess.run(
            [sys.executable, "-c", block], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"{page.name}:\n{block}\n{result.stderr[-3000:]}"


def test_no_commit_cpu_or_issue_in_prose():
    # The pattern is spelled in pieces so that the same grep over the source tree finds
    # nothing in this file either.
    pattern = re.compile("EP" "YC|Xe" "on|issue [0-9]+|" r"\bat [0-9a-f]{7}\b")
    found = []
    for top in ("flows", "configs", "experiments", "bench", "scripts", "tests"):
        for path in (ROOT / top).rglob("*"):
            if path.suffix in (".py", ".md", ".sh", ".txt"):
                for n, line in enumerate(path.read_text().splitlines(), 1):
                    if pattern.search(line):
                        found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    for page in PAGES:  # hand-written text only: generated tables carry their provenance
        text = re.sub(
            r"<!-- generated: \w+ -->.*?<!-- end generated -->", "", page.read_text(), flags=re.S
        )
        found += [f"{page.name}: {line}" for line in text.splitlines() if pattern.search(line)]
    assert not found, "\n".join(found)
