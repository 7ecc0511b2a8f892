"""Checks shared by the end-to-end tests: a user error's one line, a damaged checkpoint, and
many command lines run from one interpreter (``run_commands``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imports the libraries once, then runs each command ``python -m MODULE ARGS...`` in a fork
# of itself (``runpy`` as ``__main__``, the module's flags defined afresh), its stdout and
# stderr in files, its exit status as ``python -m`` would give it.
_DRIVER = """
import json, os, runpy, sys, traceback
import experiments.cli, flows.train.loop, flows.train.restore, flows.data, flows.reporting.compare
commands, out = json.loads(sys.argv[1]), sys.argv[2]
for i, args in enumerate(commands):
    pid = os.fork()
    if pid == 0:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(f"{out}/{i}.{name}", os.O_WRONLY | os.O_CREAT), fd)
        sys.argv = list(args)
        try:
            runpy.run_module(args[0], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, int | None):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    with open(f"{out}/{i}.rc", "w") as f:
        f.write(str(os.waitstatus_to_exitcode(status)))
"""


def run_commands(commands: list[list[str]], env: dict | None = None):
    """Runs each ``[module, *args]`` as ``python -m module args`` would, all from one
    interpreter that imported the libraries once (a fork per command); returns one
    ``subprocess.CompletedProcess`` each (``returncode``, ``stdout``, ``stderr``)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **(env or {}))
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-c", _DRIVER, json.dumps(commands), out],
            cwd=ROOT,
            env=env,
            check=True,
        )

        def read(i, name):
            with open(os.path.join(out, f"{i}.{name}")) as f:
                return f.read()

        return [
            subprocess.CompletedProcess(
                ["python", "-m", *args], int(read(i, "rc")), read(i, "stdout"), read(i, "stderr")
            )
            for i, args in enumerate(commands)
        ]


def assert_one_line_error(result, *expected) -> str:
    """``result`` (a finished subprocess) exited with status 2 after exactly one non-empty
    stderr line, ``error: ...``, naming each of ``expected``; returns that line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.args, result.returncode, result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error:"), (result.args, result.stderr[-3000:])
    for text in expected:
        assert text in lines[0], (result.args, lines[0])
    return lines[0]


def corrupt_files(directory) -> None:
    """Overwrites every file under ``directory`` (a checkpoint, say) with garbage."""
    for root, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
