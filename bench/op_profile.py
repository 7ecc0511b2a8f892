"""Where a compiled Glow step spends its time: XLA's own per-operation trace, summed.

Runs one of the benchmark's jit-compiled steps (``train``, ``eval`` or ``sample``, built
exactly as ``bench.throughput`` builds them) under ``jax.profiler`` with XLA:CPU's per-thunk
trace events on (``--xla_cpu_enable_xprof_traceme=true``, set by re-running itself), reads
the Perfetto trace JSON it writes, and prints, per compiled step call:

  * the time in matrix products (XLA ``dot``s and library GEMM fusions) and in everything
    else (elementwise fusions, copies and transposes, concatenations, slices);
  * the ``--top`` most expensive operations with their HLO (shape and operands), and for
    the products the GFLOP/s they reached.

  python -m bench.op_profile --mode=train --image_shape=32,32,3 --batch_size=32 \
      --compute_dtype=bfloat16 --remat_nets

Every flag of ``bench.throughput`` that shapes the model is accepted. Operations that run
concurrently on the two cores overlap in the sums, so the total can exceed the wall time.
The last line printed is one JSON record.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time

TRACEME_FLAG = "--xla_cpu_enable_xprof_traceme=true"
_DEF_RE = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) (.*)")
_SHAPE_RE = re.compile(r"\w+\[([\d,]*)\]")


def _is_product(name: str, hlo: str) -> bool:
    return name.startswith(("dot", "ynn_fusion", "xnn_fusion", "onednn")) or " dot(" in hlo


def _dot_gflop(definition: str, hlo_text: str) -> float | None:
    """FLOPs of a 2-D product from its HLO line: 2 * M * N * K (K from the first operand)."""
    out_shape, rest = definition
    m = _SHAPE_RE.match(out_shape)
    if not m or not m.group(1):
        return None
    dims = [int(d) for d in m.group(1).split(",")]
    operand = re.search(r"\(%([\w.\-]+)", rest)
    if len(dims) != 2 or not operand:
        return None
    op_def = re.search(rf"%{re.escape(operand.group(1))} = (\S+) ", hlo_text)
    if not op_def:
        return None
    op_dims = _SHAPE_RE.match(op_def.group(1))
    if not op_dims or not op_dims.group(1):
        return None
    a = [int(d) for d in op_dims.group(1).split(",")]
    if len(a) != 2:
        return None
    k = a[1] if a[0] in dims else a[0]
    return 2.0 * dims[0] * dims[1] * k / 1e9


def profile(fn, calls: int, hlo_text: str, top: int, trace_dir: str):
    import jax

    for _ in range(2):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    wall_ms = (time.perf_counter() - t0) / calls * 1e3
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(calls):
        fn()
    jax.profiler.stop_trace()
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    if not paths:
        raise RuntimeError(f"jax.profiler wrote no Perfetto trace under {trace_dir}")
    with gzip.open(paths[-1]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    definitions = {}
    for line in hlo_text.splitlines():
        m = _DEF_RE.match(line)
        if m:
            definitions.setdefault(m.group(1), (m.group(2), m.group(3)))
    total_us, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in definitions:
            total_us[e["name"]] += e.get("dur", 0)
            count[e["name"]] += 1
    ms = {name: us / calls / 1e3 for name, us in total_us.items()}
    products = {n: t for n, t in ms.items() if _is_product(n, " ".join(definitions[n]))}
    others = {n: t for n, t in ms.items() if n not in products}
    rows = []
    for name, t in sorted(ms.items(), key=lambda kv: -kv[1])[:top]:
        shape, rest = definitions[name]
        row = {"op": name, "ms": round(t, 3), "runs": count[name] // calls, "shape": shape}
        if name in products:
            gflop = _dot_gflop(definitions[name], hlo_text)
            if gflop:
                row["gflop_per_s"] = round(gflop * row["runs"] / (t / 1e3), 1)
        row["hlo"] = rest[:150]
        rows.append(row)
    return {
        "wall_ms_per_call": round(wall_ms, 2),
        "products_ms": round(sum(products.values()), 2),
        "other_ms": round(sum(others.values()), 2),
        "top": rows,
    }


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    p.add_argument("--mode", default="train", choices=("train", "eval", "sample"))
    p.add_argument("--calls", type=int, default=5, help="profiled calls (after 2 warm-up)")
    p.add_argument("--top", type=int, default=25, help="operations listed")
    own, rest = p.parse_known_args(argv)
    if TRACEME_FLAG not in os.environ.get("XLA_FLAGS", ""):
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + TRACEME_FLAG).strip()
        env.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
        cmd = [sys.executable, "-m", "bench.op_profile", *argv]
        raise SystemExit(subprocess.run(cmd, env=env).returncode)

    import jax
    import numpy as np
    import optax

    from bench.throughput import build, make_steps, model_config, parse_args

    args = parse_args([*rest, "--no-hugepages"])
    shape = tuple(int(s) for s in args.image_shape.split(","))
    model, data, key = build(args, shape, model_config(args))
    tx = optax.adam(args.lr)
    params, train_step, eval_step, sample_step = make_steps(
        model, tx, int(np.prod(shape)), args.batch_size
    )
    if own.mode == "train":
        fn_args = (params, tx.init(params), key, data)
        compiled = jax.jit(train_step).lower(*fn_args).compile()
    elif own.mode == "eval":
        fn_args = (params, key, data)
        compiled = jax.jit(eval_step).lower(*fn_args).compile()
    else:
        fn_args = (params, key)
        compiled = jax.jit(sample_step).lower(*fn_args).compile()

    def call():
        jax.block_until_ready(compiled(*fn_args))

    with tempfile.TemporaryDirectory() as trace_dir:
        result = profile(call, own.calls, compiled.as_text(), own.top, trace_dir)
    print(
        f"{own.mode}: {result['wall_ms_per_call']:.1f} ms per call; in operations: "
        f"products {result['products_ms']:.1f} ms, other {result['other_ms']:.1f} ms"
    )
    for row in result["top"]:
        rate = f"{row['gflop_per_s']:6.0f} GFLOP/s" if "gflop_per_s" in row else " " * 14
        print(f"{row['ms']:8.2f} ms  x{row['runs']:<3d} {rate}  {row['op']}: {row['shape']}")
    record = {
        "mode": own.mode,
        "case": f"{args.image_shape} L{args.num_levels} K{args.num_steps} "
        f"h{args.hidden_channels} b{args.batch_size}",
        "compute_dtype": args.compute_dtype,
        "remat_coupling_nets": args.remat_nets,
        "backprop": args.backprop,
        **result,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
