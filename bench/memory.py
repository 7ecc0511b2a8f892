"""Training memory and compile time against depth K, one fresh process per configuration.

Peak RSS never shrinks, so each (K, backprop) configuration runs ``bench.throughput
--only=train`` in its own subprocess and reports that process's ``ru_maxrss`` (which also
counts XLA's compilation), XLA's own count of the training step's temporary buffers
(``train_temp_mb``: the activations kept for the backward pass, the part that grows with K)
and the training step's compile time.

  python -m bench.memory --image_shape=32,32,1 --batch_size=64 --num_steps=8,32 \
      --backprop=autodiff,checkpoint,invertible --out results/bench

Prints one JSON record as the last line (``--out DIR`` also writes
``DIR/jax_memory_<case>.json``), with per-mode ratios K=32 / K=8.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

from bench.records import write_record

KEYS = ("peak_rss_mb", "train_temp_mb", "compile_s", "train_images_per_s")


def run_one(args, num_steps, backprop):
    cmd = [
        sys.executable,
        "-m",
        "bench.throughput",
        f"--image_shape={args.image_shape}",
        f"--num_levels={args.num_levels}",
        f"--num_steps={num_steps}",
        f"--hidden_channels={args.hidden_channels}",
        f"--batch_size={args.batch_size}",
        f"--backprop={backprop}",
        "--only=train",
        "--no-hugepages",  # plain 4 KiB pages: RSS counts what is touched, not 2 MiB pages
        "--warmup=1",
        f"--iters={args.iters}",
        "--repeats=1",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    record = json.loads(out.strip().splitlines()[-1])
    return {k: record.get(k) for k in KEYS}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image_shape", default="32,32,1")
    p.add_argument("--num_levels", type=int, default=3)
    p.add_argument("--hidden_channels", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_steps", default="8,32", help="comma-separated K values")
    p.add_argument("--backprop", default="autodiff,checkpoint,invertible")
    p.add_argument("--iters", type=int, default=3, help="timed training steps per run")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    ks = [int(k) for k in args.num_steps.split(",")]
    modes = args.backprop.split(",")
    runs = {}
    for mode in modes:
        runs[mode] = {}
        for k in ks:
            runs[mode][f"K{k}"] = run_one(args, k, mode)
            print(json.dumps({"backprop": mode, "num_steps": k, **runs[mode][f"K{k}"]}), flush=True)
    ratios = {}
    if len(ks) >= 2:
        lo, hi = f"K{min(ks)}", f"K{max(ks)}"
        for mode in modes:
            ratios[mode] = {
                key: round(runs[mode][hi][key] / runs[mode][lo][key], 3)
                for key in ("peak_rss_mb", "train_temp_mb", "compile_s")
                if runs[mode][lo].get(key)
            }
    h, w, c = (int(s) for s in args.image_shape.split(","))
    case = f"{h}x{w}x{c}_L{args.num_levels}_h{args.hidden_channels}_b{args.batch_size}"
    record = {
        "case": case,
        "runs": runs,
        f"ratio_K{max(ks)}_over_K{min(ks)}": ratios,
        "note": "peak_rss_mb: whole process incl. XLA compilation; train_temp_mb: XLA "
        "memory_analysis temp buffers of the compiled training step",
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if args.out:
        write_record(args.out, f"jax_memory_{case}.json", record)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
