"""Checks shared by the end-to-end tests: a user error's one line, a damaged checkpoint."""

from __future__ import annotations

import os


def assert_one_line_error(result, *expected) -> str:
    """``result`` (a finished subprocess) exited with status 2 after exactly one non-empty
    stderr line, ``error: ...``, naming each of ``expected``; returns that line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr[-3000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def corrupt_files(directory) -> None:
    """Overwrites every file under ``directory`` (a checkpoint, say) with garbage."""
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
