"""Paired comparison with the PyTorch peer on a shared, noisy machine.

Runs ``bench.throughput`` (this library) and ``bench/torch_peer.py`` (normflows, in its own
venv, see bench/README.md) alternately, ``--rounds`` times each, with the same thread count,
so both see the same background load; reports every run, the best of each side and the
ratios of the bests. ``--threads=1`` also runs XLA single-threaded
(``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``), which degrades
gracefully under load and so gives the steadiest ratio.

  python -m bench.paired --image_shape=32,32,1 --batch_size=64 --num_steps=8 --threads=2 \
      --rounds=2 --out results/bench

Prints one JSON record as the last line; ``--out DIR`` also writes
``DIR/jax_paired_<case>_t<threads>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

from bench.records import write_record

KEYS = ("train_images_per_s", "eval_images_per_s", "sample_images_per_s")


def _last_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image_shape", default="32,32,1")
    p.add_argument("--num_levels", type=int, default=3)
    p.add_argument("--num_steps", type=int, default=8)
    p.add_argument("--hidden_channels", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--backprop", default="autodiff")
    p.add_argument(
        "--compute_dtype",
        default="float32",
        help="comma-separated JAX variants, one run of each per round: DTYPE or DTYPE+remat "
        "(recomputed coupling-net activations), e.g. float32,bfloat16+remat",
    )
    p.add_argument("--timing", default="--warmup=3 --iters=8 --repeats=2")
    p.add_argument("--peer_python", default=".venv-peer/bin/python")
    p.add_argument(
        "--hugepages",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run both sides with GLIBC_TUNABLES=glibc.malloc.hugetlb=1",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    common = [
        f"--image_shape={args.image_shape}",
        f"--num_levels={args.num_levels}",
        f"--num_steps={args.num_steps}",
        f"--hidden_channels={args.hidden_channels}",
        f"--batch_size={args.batch_size}",
        *args.timing.split(),
    ]
    variants = args.compute_dtype.split(",")
    jax_cmds = {}
    for variant in variants:
        dtype, _, remat = variant.partition("+")
        if remat not in ("", "remat"):
            raise ValueError(f"--compute_dtype entry {variant!r}: DTYPE or DTYPE+remat")
        side = "jax" if variant == "float32" else "jax_" + variant.replace("+", "_")
        jax_cmds[side] = [
            sys.executable,
            "-m",
            "bench.throughput",
            *common,
            f"--backprop={args.backprop}",
            f"--compute_dtype={dtype}",
            *(["--remat_nets"] if remat else []),
        ]
    peer_cmd = [args.peer_python, "bench/torch_peer.py", *common, f"--threads={args.threads}"]
    env = dict(os.environ)
    if args.hugepages:
        # Both sides: glibc's malloc asks for transparent huge pages for its large blocks.
        # Each training step allocates (and page-faults in) its activation buffers afresh;
        # with 4 KiB pages that costs XLA's autodiff path ~20% of a step.
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    if args.threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    elif args.threads != os.cpu_count():
        raise ValueError("XLA:CPU runs on every core or (--threads=1) on one")
    sides = {**jax_cmds, "torch": peer_cmd}
    runs = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, cmd in sides.items():
            r = _last_json(cmd, env)
            runs[side].append(
                {k: r.get(k) for k in (*KEYS, "peak_rss_mb", "loadavg_before", "loadavg_after")}
            )
            print(json.dumps({side: runs[side][-1]}), flush=True)
    best = {side: {k: max(r[k] for r in rs) for k in KEYS} for side, rs in runs.items()}
    ratio = {
        side: {k: round(best[side][k] / best["torch"][k], 2) for k in KEYS} for side in jax_cmds
    }
    h, w, c = (int(s) for s in args.image_shape.split(","))
    case = (
        f"{h}x{w}x{c}_L{args.num_levels}_K{args.num_steps}_h{args.hidden_channels}"
        f"_b{args.batch_size}"
    )
    record = {
        "case": case,
        "threads": args.threads,
        "backprop": args.backprop,
        "compute_dtype": args.compute_dtype,
        "glibc_tunables": env.get("GLIBC_TUNABLES", ""),
        "best": best,
        "ratio_jax_over_torch": ratio,
        "runs": runs,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if args.out:
        suffix = "" if variants == ["float32"] else "_" + "_".join(variants).replace("+", "_")
        write_record(args.out, f"jax_paired_{case}_t{args.threads}{suffix}.json", record)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
