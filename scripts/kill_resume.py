"""Crash-safety stress test: SIGKILL a training run at random instants, rerun it after each
kill, and check that it ends bitwise equal to an uninterrupted run.

    python scripts/kill_resume.py                     # 20 kills, digits smoke model, 300 steps
    python scripts/kill_resume.py --kills=3 --steps=40 --plan=checkpoint:2,write:2,time
    python scripts/kill_resume.py --record=results/kill_resume.json   # docs/trust.md's record

Kinds of kill (``--plan`` lists them in order; by default a seeded random mix):

* ``time``: the parent sends SIGKILL at a random instant of the child's expected life
  (start-up, compilation, steps, validation, saves, the final evaluation: anywhere), or at
  ``time:SECONDS`` after its start;
* ``checkpoint:N``: the child kills itself right after issuing its N-th checkpoint save of the
  session, while orbax is still writing it (the script reports whether orbax's temporary
  directory was on disk at that instant);
* ``write:N``: the child kills itself inside its N-th atomic file write of the session
  (``flows.workdir.atomic_file``: the metrics rewrite on resume, config.json, data_info.json,
  sample grids, eval_test.json, the final PNGs), after the temporary file is written and
  before the rename.

After the last kill the run is completed; the script then compares, against the uninterrupted
reference: every array of the final checkpoint (params, optimizer state, EMA, step, RNG), byte
for byte; the deterministic fields of every ``metrics.jsonl`` record; and the test bits/dim and
checkpoint step of ``eval_test.json``. Exit status 0 when all are equal, 1 otherwise. The same
command runs every child (``python -m experiments.train`` on ``configs/glow_digits.py:smoke``),
so a run killed and rerun is exactly what a user would do. Needs only the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import runpy
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from flows.provenance import provenance  # noqa: E402
from flows.workdir import write_json as write_record  # noqa: E402

DETERMINISTIC_FIELDS = ("step", "train_bpd", "grad_norm", "val_bpd", "nonfinite_steps")


def train_args(workdir: str, steps: int) -> list[str]:
    return [
        "--config=configs/glow_digits.py:smoke",
        f"--workdir={workdir}",
        f"--config.train.num_train_steps={steps}",
        "--config.train.checkpoint_every=10",
        "--config.train.eval_every=10",
        "--config.train.log_every=5",
        "--config.train.progress=False",
    ]


# -- the child: a training run that may kill itself at a chosen point ----------------------


def _kill_self(what: str) -> None:
    print(f"KILL {what}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _install_checkpoint_kill(n: int) -> None:
    from flows.train import checkpoint

    original, calls = checkpoint.Checkpointer.save, [0]

    def save(self, step, state, meta):
        original(self, step, state, meta)
        if os.path.basename(self.directory) == "checkpoints":
            calls[0] += 1
            if calls[0] == n:
                tmp = [d for d in os.listdir(self.directory) if "tmp" in d]
                _kill_self(f"inside the save of checkpoint {step} (orbax temporary dir: {tmp})")

    checkpoint.Checkpointer.save = save


def _install_write_kill(n: int) -> None:
    original, calls = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        name = os.path.basename(str(src))
        if name.startswith(".") and name.endswith(".tmp"):  # flows.workdir.atomic_file
            calls[0] += 1
            if calls[0] == n:
                _kill_self(f"inside the atomic write of {os.path.basename(str(dst))}")
        return original(src, dst, *args, **kwargs)

    os.replace = replace


def child(kill_at: str | None, args: list[str]) -> None:
    sys.path.insert(0, ROOT)
    if kill_at:
        kind, n = kill_at.split(":")
        {"checkpoint": _install_checkpoint_kill, "write": _install_write_kill}[kind](int(n))
    sys.argv = ["experiments.train", *args]
    runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)


# -- the parent ------------------------------------------------------------------------------


def _launch(workdir: str, steps: int, kill_at: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, os.path.abspath(__file__), "--child"]
    cmd += [f"--kill_at={kill_at}"] if kill_at else []
    cmd += ["--", *train_args(workdir, steps)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _checkpoint_steps(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _state_bytes(workdir: str, step: int) -> dict[str, bytes]:
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    tree = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(step), "state")
    )
    return {
        jax.tree_util.keystr(key): np.asarray(leaf).tobytes()
        for key, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _run(workdir: str, steps: int) -> str | None:
    """Runs a child to its end; its stdout, or None (after printing why) when it failed."""
    proc = _launch(workdir, steps)
    out, err = proc.communicate()
    if proc.returncode != 0:
        print(f"{workdir}: the run failed (exit {proc.returncode}):\n{err[-3000:]}")
        return None
    return out


def _metrics_raw(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _metrics(workdir: str) -> list[dict]:
    return [{k: r[k] for k in DETERMINISTIC_FIELDS if k in r} for r in _metrics_raw(workdir)]


def _eval(workdir: str) -> dict:
    with open(os.path.join(workdir, "eval_test.json")) as f:
        record = json.load(f)
    return {k: record[k] for k in ("bits_per_dim", "bits_per_dim_se", "checkpoint_step")}


def _timed_kill(proc, kind: str, workdir: str, start: int, rng, timing, span: float) -> str:
    """SIGKILLs ``proc`` at ``time:SECONDS`` after its launch; for a bare ``time``, at a random
    instant: a third of the time during start-up, else once training has resumed, within the
    next ``span`` (a fraction of the whole training time). Returns when it struck."""
    t0 = time.time()
    if ":" in kind:
        delay, phase = float(kind.split(":")[1]), "after launch"
    elif rng.random() < 1 / 3:
        delay, phase = rng.uniform(0, timing[0]), "after launch (start-up)"
    else:
        startup, train_s, steps = timing
        # Training has resumed once metrics.jsonl, written after the launch, goes past start.
        metrics = os.path.join(workdir, "metrics.jsonl")
        fresh = lambda: os.path.exists(metrics) and os.path.getmtime(metrics) > t0
        while proc.poll() is None and not (fresh() and _last_step(workdir) > start):
            time.sleep(0.02)
        t0 = time.time()
        delay = rng.uniform(0, train_s * min(span, 1 - start / steps))
        phase = f"after training resumed at step {start}"
    try:
        proc.wait(timeout=max(delay - (time.time() - t0), 0))
        return "finished before the kill"
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    return f"SIGKILL {delay:.2f} s {phase}"


def _last_step(workdir: str) -> int:
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            lines = [line for line in f.read().split("\n") if line.strip()]
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError):
        return 0


def _plan(kills: int, rng: random.Random) -> list[str]:
    kinds = []
    for i in range(kills):
        if i % 4 == 1:
            kinds.append(f"checkpoint:{rng.randint(1, 2)}")
        elif i % 4 == 3:
            # A session's first three atomic writes are at start-up (metrics, config.json,
            # data_info.json); the last kill lets the run finish its steps and strikes inside
            # the write of eval_test.json (the 4th).
            kinds.append("write:4" if i == kills - 1 else f"write:{rng.randint(1, 3)}")
        else:
            kinds.append("time")
    return kinds


def compare_runs(reference: str, killed: str, steps: int) -> list[str]:
    """What differs between the two finished runs (empty when they are bitwise equal)."""
    problems = []
    a, b = _state_bytes(reference, steps), _state_bytes(killed, steps)
    if a.keys() != b.keys():
        problems.append(f"checkpoint trees differ: {sorted(a.keys() ^ b.keys())[:3]}")
    differing = [k for k in a.keys() & b.keys() if a[k] != b[k]]
    if differing:
        problems.append(f"{len(differing)} of {len(a)} arrays differ, e.g. {sorted(differing)[0]}")
    if _metrics(reference) != _metrics(killed):
        problems.append("metrics.jsonl records differ")
    if _eval(reference) != _eval(killed):
        problems.append(f"eval_test.json differs: {_eval(reference)} vs {_eval(killed)}")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=300, help="training steps (a multiple of 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plan", default="", help="comma-separated kinds, e.g. time,checkpoint:2")
    p.add_argument("--out", default="/tmp/kill_resume", help="workdirs go here (emptied)")
    p.add_argument("--record", default="", help="write the outcome as a JSON record here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kill_at", default=None, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.child:
        child(args.kill_at, [a for a in rest if a != "--"])
        return 0

    rng = random.Random(args.seed)
    plan = args.plan.split(",") if args.plan else _plan(args.kills, rng)
    shutil.rmtree(args.out, ignore_errors=True)
    reference, killed = os.path.join(args.out, "reference"), os.path.join(args.out, "killed")

    t0 = time.time()
    if _run(reference, args.steps) is None:
        return 1
    print(f"reference: {args.steps} steps uninterrupted in {time.time() - t0:.1f} s")
    timing = None
    if any(kind == "time" for kind in plan):
        # A child's start-up (imports, compilation from the warm cache, restore, data) timed
        # on a rerun of the finished reference; its training time from the reference's record.
        # The start-up ends where a resume rewrites metrics.jsonl (after the restore).
        t1, metrics = time.time(), os.path.join(reference, "metrics.jsonl")
        proc, startup = _launch(reference, args.steps), None
        while proc.poll() is None:
            if startup is None and os.path.getmtime(metrics) > t1:
                startup = time.time() - t1
            time.sleep(0.02)
        if proc.wait() != 0 or startup is None:
            print("could not time a child's start-up on the reference run")
            return 1
        timing = (startup, _metrics_raw(reference)[-1]["wall_time_s"], args.steps)
        print(f"a child starts in ~{timing[0]:.1f} s; the steps take ~{timing[1]:.1f} s in all")

    kills = []
    last_timed = max((i for i, kind in enumerate(plan) if kind == "time"), default=-1)
    for i, kind in enumerate(plan):
        before = _checkpoint_steps(killed)
        start = before[-1] if before else 0
        timed = kind.split(":")[0] == "time"
        proc = _launch(killed, args.steps, None if timed else kind)
        instant = None
        if timed:
            # Spread the kills over the run; the last one may strike up to its very end
            # (the final evaluation and writes included).
            span = 1.0 if i == last_timed else 3 / len(plan)
            instant = _timed_kill(proc, kind, killed, start, rng, timing, span)
        out, err = proc.communicate()
        after = _checkpoint_steps(killed)
        if proc.returncode == 0:
            what = "finished before the kill"
        elif proc.returncode == -signal.SIGKILL:
            said = [line[5:] for line in err.splitlines() if line.startswith("KILL ")]
            what = said[0] if said else instant
        else:
            print(f"kill {i + 1}: the run failed (exit {proc.returncode}):\n{err[-3000:]}")
            return 1
        resumed = [line for line in out.splitlines() if line.startswith("checkpoint ")]
        notes = f"; {' '.join(resumed)}" if resumed else ""
        print(
            f"kill {i + 1:2d}/{len(plan)} [{kind}] {what}; checkpoints {before or '-'} -> "
            f"{after or '-'}{notes}"
        )
        kills.append({"kind": kind, "what": what, "checkpoints_before": before})

    if _run(killed, args.steps) is None:
        return 1
    problems = compare_runs(reference, killed, args.steps)
    for problem in problems:
        print(f"DIFFERENT: {problem}")
    n = len(_state_bytes(killed, args.steps))
    if args.record:
        write_record(
            args.record,
            {
                "benchmark": "kill_resume",
                "steps": args.steps,
                "seed": args.seed,
                "kills": kills,
                "bitwise_equal": not problems,
                "problems": problems,
                "num_arrays": n,
                "test_bits_per_dim": _eval(killed)["bits_per_dim"],
                "wall_s": round(time.time() - t0, 1),
                "provenance": provenance(),
            },
        )
    if not problems:
        print(
            f"bitwise equal: after {len(plan)} kills the run ends with the same {n} arrays, "
            f"metrics records and test bits/dim ({_eval(killed)['bits_per_dim']:.6f}) as the "
            f"uninterrupted run ({time.time() - t0:.0f} s in all)"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
