"""Checks shared by the end-to-end tests: a user error's one line, a damaged checkpoint, and
command lines run from one interpreter (``CommandRunner``, ``run_commands``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imports the libraries once, then runs each command it reads from stdin (a JSON line: the
# command ``[module, *args]`` and a path prefix) as ``python -m MODULE ARGS...`` in a fork of
# itself (``runpy`` as ``__main__``, the module's flags defined afresh; stdin /dev/null, stdout
# and stderr in files at the prefix; killed by SIGALRM after its timeout), and writes its exit
# status, as ``python -m`` would give it, as a line to the file descriptor in argv[1].
_DRIVER = """
import json, os, runpy, signal, sys, traceback
import experiments.cli, flows.train.loop, flows.train.restore, flows.data, flows.reporting.compare
replies = os.fdopen(int(sys.argv[1]), "w", buffering=1)
for request in sys.stdin:
    args, prefix, timeout = json.loads(request)
    pid = os.fork()
    if pid == 0:
        signal.alarm(timeout)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(f"{prefix}.{name}", os.O_WRONLY | os.O_CREAT), fd)
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
    print(os.waitstatus_to_exitcode(status), file=replies)
"""


class CommandRunner:
    """``runner([module, *args])`` runs the command as ``python -m module args`` would, from the
    repository root, and returns a ``subprocess.CompletedProcess`` (``returncode``, ``stdout``,
    ``stderr``): each command in a fork of one interpreter that imported the libraries once
    (started by the first command; ``close`` ends it), which saves each command the seconds of
    its imports. ``env``: variables added to the environment of all of them."""

    def __init__(self, env: dict | None = None):
        self.env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **(env or {}))
        self._driver = None
        self._count = 0

    def __call__(self, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
        if self._driver is None:
            self._files = tempfile.TemporaryDirectory()
            read, write = os.pipe()
            self._driver = subprocess.Popen(
                [sys.executable, "-c", _DRIVER, str(write)],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.PIPE,
                text=True,
                pass_fds=(write,),
            )
            os.close(write)
            self._replies = os.fdopen(read)
        args = [str(a) for a in args]
        prefix = os.path.join(self._files.name, str(self._count))
        self._count += 1
        self._driver.stdin.write(json.dumps([args, prefix, timeout]) + "\n")
        self._driver.stdin.flush()
        reply = self._replies.readline()
        if not reply:
            raise RuntimeError(f"the command driver ended (status {self._driver.wait()})")

        def read(name):
            with open(f"{prefix}.{name}") as f:
                return f.read()

        return subprocess.CompletedProcess(
            ["python", "-m", *args], int(reply), read("stdout"), read("stderr")
        )

    def close(self) -> None:
        if self._driver is not None:
            self._driver.stdin.close()
            self._driver.wait()
            self._replies.close()
            self._files.cleanup()
            self._driver = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_commands(commands: list[list[str]], env: dict | None = None):
    """Runs each ``[module, *args]`` as ``python -m module args`` would, all from one
    interpreter that imported the libraries once (``CommandRunner``); returns one
    ``subprocess.CompletedProcess`` each (``returncode``, ``stdout``, ``stderr``)."""
    with CommandRunner(env) as run:
        return [run(args) for args in commands]


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
