"""What the reference-implementation harnesses share: flags, timing, CPU-load bookkeeping and
the record's common fields.

The harnesses (``bench.torch_peer``: normflows' Glow; ``bench.tarflow_peer``: apple/ml-tarflow;
``bench.jet_peer``: big_vision's Jet) run in the references' own virtualenvs, so this module
uses the standard library only. Run them from the repository root as modules
(``<venv>/bin/python -m bench.tarflow_peer ...``), which is what puts ``bench`` on the path.

Timing protocol (the one of ``bench.throughput``): ``--warmup`` untimed calls, then blocks of
``--iters`` timed calls, each call waiting for its result; a block's throughput is
``batch_size / median(call time)``; the best of ``--repeats`` blocks is reported and every
block is kept. ``--quiet_frac`` (optional) counts only blocks during which other processes
used at most that fraction of the CPU (torch's OpenMP threads slow down badly when a core is
shared), running blocks until ``--repeats`` such blocks or ``--max_s``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import time

MODES = ("train", "eval", "sample")


def add_common_args(p: argparse.ArgumentParser, *, image_shape: str, batch_size: int = 64):
    """The flags every harness takes (the architecture's flags are its own)."""
    p.add_argument("--image_shape", default=image_shape, help="H,W,C")
    p.add_argument("--batch_size", type=int, default=batch_size)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="compute threads")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10, help="timed iterations per block")
    p.add_argument("--repeats", type=int, default=2, help="timed blocks; best median kept")
    p.add_argument(
        "--quiet_frac",
        type=float,
        default=None,
        help="count only blocks during which other processes used at most this CPU fraction; "
        "run blocks until --repeats such blocks (or --max_s)",
    )
    p.add_argument("--max_s", type=float, default=600.0, help="per-mode limit with --quiet_frac")
    p.add_argument("--modes", default=",".join(MODES), help="which of train,eval,sample to run")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", default=None, help="name in the output file; derived if omitted")
    p.add_argument("--out", default=None, help="directory for the record")


def add_flush_denormal_arg(p: argparse.ArgumentParser):
    """``--flush_denormal`` of the torch harnesses."""
    p.add_argument(
        "--flush_denormal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.set_flush_denormal (XLA:CPU flushes denormals too); without it the first "
        "Adam steps hit multi-second denormal stalls on this CPU",
    )


def reference_dir(p: argparse.ArgumentParser, args, marker: str) -> str:
    """``--reference``, checked to hold ``marker`` (a file of the reference's checkout)."""
    path = os.path.abspath(os.path.expanduser(args.reference))
    if not os.path.isfile(os.path.join(path, marker)):
        p.error(f"--reference={args.reference}: no {marker} there (a checkout of the reference)")
    return path


def parse_modes(p: argparse.ArgumentParser, args) -> list[str]:
    modes = [m for m in args.modes.split(",") if m]
    if not modes or not set(modes) <= set(MODES):
        p.error(f"--modes takes a subset of {','.join(MODES)}, got {args.modes!r}")
    return modes


def image_shape(p: argparse.ArgumentParser, args) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in args.image_shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        p.error(f"--image_shape takes H,W,C, got {args.image_shape!r}")
    return shape


def cpu_busy_s():
    """System-wide busy CPU seconds (all cores) from /proc/stat; None where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_block(fn, iters):
    """Median wall time (s) of fn() over iters calls."""
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(fn, batch_size, warmup, iters, repeats, quiet_frac=None, max_s=600.0):
    """Best block throughput (images/s), every block as [images/s, other CPU fraction], and
    the number of blocks that counted (the module docstring's protocol)."""
    for _ in range(warmup):
        fn()
    blocks, clean = [], []
    ncpu = os.cpu_count() or 1
    t_end = time.perf_counter() + max_s
    while len(clean) < repeats:
        busy0, own0, t0 = cpu_busy_s(), own_cpu_s(), time.perf_counter()
        ips = batch_size / time_block(fn, iters)
        wall = time.perf_counter() - t0
        busy1 = cpu_busy_s()
        other = None
        if busy0 is not None and busy1 is not None:
            other = max((busy1 - busy0) - (own_cpu_s() - own0), 0.0) / (wall * ncpu)
        blocks.append([round(ips, 2), None if other is None else round(other, 3)])
        if quiet_frac is None or (other is not None and other <= quiet_frac):
            clean.append(ips)
        elif time.perf_counter() > t_end:
            break
    best = max(clean) if clean else max(b[0] for b in blocks)
    return best, blocks, len(clean)


class Timings:
    """Runs the requested modes under the protocol and gathers their record fields.

    Construct it first thing (it takes the load average before the model is built); call
    ``run(name, fn)`` per mode in order (a name outside ``--modes`` is skipped: ``sample_*``
    variants run with ``sample``); ``fields()`` gives ``<name>_images_per_s``,
    ``<name>_blocks``, ``clean_blocks`` and ``timing``."""

    def __init__(self, args, modes):
        self.args, self.modes = args, modes
        self.load_before = os.getloadavg()
        self.results: dict[str, tuple] = {}
        self.t_start = self.busy_start = self.own_start = None

    def wanted(self, name: str) -> bool:
        return name.split("_")[0] in self.modes

    def run(self, name: str, fn) -> None:
        if not self.wanted(name):
            return
        if self.t_start is None:
            self.t_start, self.busy_start, self.own_start = (
                time.perf_counter(),
                cpu_busy_s(),
                own_cpu_s(),
            )
        a = self.args
        self.results[name] = measure(
            fn, a.batch_size, a.warmup, a.iters, a.repeats, a.quiet_frac, a.max_s
        )

    def fields(self) -> dict:
        a = self.args
        out = {}
        for name in (*MODES, *(n for n in self.results if n not in MODES)):
            best, blocks, _ = self.results.get(name, (None, [], 0))
            out[f"{name}_images_per_s"] = None if best is None else round(best, 2)
            out[f"{name}_blocks"] = blocks
        out["clean_blocks"] = {n: r[2] for n, r in self.results.items()}
        wall = 0.0 if self.t_start is None else time.perf_counter() - self.t_start
        other_frac = None
        busy_end = cpu_busy_s()
        if self.busy_start is not None and busy_end is not None and wall > 0:
            other = (busy_end - self.busy_start) - (own_cpu_s() - self.own_start)
            other_frac = round(max(other, 0.0) / (wall * (os.cpu_count() or 1)), 3)
        out["timing"] = {
            "warmup": a.warmup,
            "iters": a.iters,
            "repeats": a.repeats,
            "statistic": "best block; block = median over iters",
            "blocks": "[images/s, CPU fraction used by other processes]",
            "quiet_frac": a.quiet_frac,
            "wall_s": round(wall, 1),
            "other_processes_cpu_frac": other_frac,
        }
        out["loadavg_before"] = [round(v, 2) for v in self.load_before]
        return out


def common_record_fields() -> dict:
    """The machine and process fields of every harness's record (read at the end)."""
    return {
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def emit(record: dict, out_dir: str | None, filename: str) -> None:
    """Prints the record as the last line; with ``out_dir`` also writes it there (indented,
    through a temporary file). No provenance is added here: ``bench.paired``'s record, which
    carries these records, has it."""
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, filename)
        with open(path + ".tmp", "w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
        os.replace(path + ".tmp", path)
    print(json.dumps(record), flush=True)


def rnd(v, nd=2):
    return None if v is None else round(v, nd)
