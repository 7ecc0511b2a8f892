"""Where a record comes from: the code, the machine, the libraries and the command.

Every record the project writes (evaluation records, training's ``eval_test.json``, latents
and OOD records, benchmark records) carries ``provenance()`` under the key ``"provenance"``,
so that a figure in the docs can be traced to the commit and machine that produced it
without anyone typing either:

* ``commit``: ``git rev-parse HEAD`` of the checkout this package was imported from (None
  when it is not a git checkout, e.g. an installed wheel), and ``dirty``: whether tracked
  files differed from that commit when the record was made;
* ``cpu``: the model name and the vector/matrix instruction flags that decide which kernels
  are fast (``/proc/cpuinfo``), and the number of cores the process may use;
* ``devices``: JAX's backend and device kind and count;
* ``versions``: Python and the libraries that move results (jax, jaxlib, flax, optax,
  numpy, orbax-checkpoint, grain, tensorflow-datasets);
* ``date`` (UTC) and ``command`` (the command line as typed, ``python -m ...`` included).
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

CPUINFO = "/proc/cpuinfo"
# The CPU flags that decide which kernels are fast (FMA/AVX widths, native bf16 dots, AMX).
CPU_FLAGS = (
    "fma",
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "numpy",
    "orbax-checkpoint",
    "grain",
    "tensorflow-datasets",
)
REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout ``flows`` is
    imported from."""
    if not (REPO / ".git").exists():
        return {"commit": None, "dirty": None}
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


@functools.cache
def cpu_info(cpuinfo_path: str = CPUINFO) -> dict:
    """``{"model", "flags", "cores"}``: the CPU's model name, which of ``CPU_FLAGS`` it
    reports, and how many cores this process may run on."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags], "cores": cores}


def library_versions() -> dict:
    """Python's version and those of ``PACKAGES`` that are installed."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: ``python -m experiments.train --config=...`` (the interpreter
    named ``python``), or ``argv`` joined when given."""
    if argv is None:
        argv = list(getattr(sys, "orig_argv", sys.argv))
        if argv:
            argv[0] = "python"
    return shlex.join(argv)


def devices() -> dict:
    """JAX's backend, device kind and device count (JAX is imported only if it already
    is, so that a record made without JAX does not start a backend)."""
    if "jax" not in sys.modules:
        return {}
    import jax

    found = jax.devices()
    return {
        "backend": jax.default_backend(),
        "kind": found[0].device_kind,
        "count": len(found),
        "process_count": jax.process_count(),
    }


def provenance(argv: list[str] | None = None) -> dict:
    """Everything a record needs to say where it came from (see the module docstring)."""
    return {
        **code_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(argv),
        "cpu": cpu_info(),
        "devices": devices(),
        "versions": library_versions(),
    }
