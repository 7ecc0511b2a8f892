"""TarFlow's sampling speed: the sequential decoder against Jacobi updates and ``auto``,
paired, on one device.

  python -m bench.sampling --image_shape=28,28,1 --field patch_size=4 --field width=128 \
      --field num_blocks=4 --field layers_per_block=4 --batch_sizes=1,64 --out=results/bench
  python -m bench.sampling --image_shape=256,256,3 --field patch_size=8 --field width=768 \
      --field num_blocks=8 --field layers_per_block=8 --field num_heads=12 \
      --batch_sizes=1,16 --rounds=2 --out=results/bench

The first is ml-tarflow's MNIST setting (patch 4, width 128, 4 blocks x 4 layers, 49 tokens),
the second its AFHQ shape (256x256x3, patch 8: 1024 tokens of 192 values, width 768, 8 x 8;
some 450M parameters: it needs a quiet machine with several GiB of memory and, at batch 16
on a CPU, hours).

Weights: the family's initialisation, whose zero-initialised output layers make every block
the identity (Jacobi would invert it in one update), so each block's output layer gets
Gaussian weights scaled to give outputs (shift and log-scale) of standard deviation
``--output_std``; or ``--workdir``'s trained weights (its image shape and fields). For each
batch size, the three samplers are compiled ahead of time (``auto``'s choice is measured then,
``DensityModel.choose_sampler``, and its seconds recorded), then timed in ``--rounds``
rounds, each running sequential, jacobi and auto in turn on the same latents, so the three
see the same background load; the best round of each is reported. The record has the
seconds per batch, images/s, the speedups over sequential, the Jacobi updates of each block,
``auto``'s methods and reason, and the largest ``|x - x_sequential|`` of the jacobi and auto
samples on the [-1, 1] scale.

The last line printed is the JSON record; ``--out DIR`` also writes
``DIR/tarflow_sampling_<case>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from bench.records import write_record
from bench.throughput import model_config
from flows.errors import ConfigError
from flows.models import TarFlow, build_model, make_sampler
from flows.models.jacobi import DEFAULT_TOL
from flows.models.registry import describe_model

SAMPLERS = ("sequential", "jacobi", "auto")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image_shape", default="28,28,1", help="H,W,C")
    p.add_argument("--field", action="append", default=[], help="a config.model field, key=value")
    p.add_argument("--workdir", default=None, help="a trained TarFlow run instead")
    p.add_argument("--batch_sizes", default="1,64")
    p.add_argument("--num_classes", type=int, default=0, help="0: unconditional")
    p.add_argument("--guidance", type=float, default=0.0, help="needs --num_classes")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--output_std", type=float, default=0.1)
    p.add_argument("--jacobi_tol", type=float, default=DEFAULT_TOL)
    p.add_argument("--jacobi_max_iters", type=int, default=None)
    p.add_argument("--jacobi_chunk", type=int, default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", default=None, help="name in the output file; derived if omitted")
    p.add_argument("--out", default=None, help="directory for tarflow_sampling_<case>.json")
    return p.parse_args(argv)


def random_model(args, image_shape):
    """A TarFlow of ``--field``'s config with random output layers (module docstring)."""
    cfg = {**model_config(argparse.Namespace(model="tarflow", field=args.field))}
    model = build_model(cfg, image_shape, args.num_classes or None, rngs=nnx.Rngs(args.seed))
    out = model.blocks.steps.net.proj_out.kernel  # (blocks, width, 2d), zero at init
    std = args.output_std / math.sqrt(out.shape[1])  # layer-normed inputs: unit variance
    out[...] = std * jax.random.normal(jax.random.key(args.seed + 1), out.shape, out.dtype)
    if args.guidance:
        model.label_dropout = 0.1  # random weights: the null branch is as good as any
    return model, cfg


def trained_model(workdir):
    from flows.train.restore import load_run

    model, config, _ = load_run(workdir)
    return model, config.model.to_dict()


def run_batch(model, batch: int, args) -> dict:
    latents = model.sample_latents(jax.random.key(args.seed), batch, args.temperature)
    labels = jnp.arange(batch) % model.num_classes if model.num_classes else None
    guidance = float(args.guidance)
    jacobi = make_sampler(
        "jacobi", tol=args.jacobi_tol, max_iters=args.jacobi_max_iters, chunk=args.jacobi_chunk
    )
    start = time.perf_counter()
    auto = model.choose_sampler(latents, context=labels, guidance=guidance, sampler=jacobi)
    choose_s = time.perf_counter() - start
    samplers = {"sequential": make_sampler("sequential"), "jacobi": jacobi, "auto": auto}
    graphdef, state = nnx.split(model)

    def program(sampler):
        @jax.jit
        def invert(state, z, labels):
            m = nnx.merge(graphdef, state)
            x, _, stats = m.inverse_with_sampler(
                z, context=labels, guidance=guidance, sampler=sampler
            )
            return x, stats

        return invert

    programs, compile_s = {}, {}
    for name, sampler in samplers.items():  # ahead of time: no call is spent compiling
        start = time.perf_counter()
        programs[name] = program(sampler).lower(state, latents, labels).compile()
        compile_s[name] = time.perf_counter() - start
    times, outputs = {name: [] for name in SAMPLERS}, {}
    for _ in range(args.rounds):
        for name in SAMPLERS:
            start = time.perf_counter()
            outputs[name] = jax.block_until_ready(programs[name](state, latents, labels))
            times[name].append(time.perf_counter() - start)
    best = {name: min(t) for name, t in times.items()}
    x_seq = outputs["sequential"][0]

    def max_diff(name):  # on TarFlow's [-1, 1] scale: twice the unit scale's
        return float(2 * jnp.max(jnp.abs(outputs[name][0] - x_seq)))

    stats = {name: jax.tree.map(lambda v: v.tolist(), outputs[name][1]) for name in SAMPLERS}
    return {
        "batch_size": batch,
        **{f"{name}_s": best[name] for name in SAMPLERS},
        **{f"{name}_images_per_s": batch / best[name] for name in SAMPLERS},
        "speedup_jacobi": best["sequential"] / best["jacobi"],
        "speedup_auto": best["sequential"] / best["auto"],
        "jacobi_updates": stats["jacobi"]["updates"],
        "jacobi_converged": stats["jacobi"]["converged"],
        "auto_methods": list(auto.block_methods(model.num_blocks)),
        "auto_updates": stats["auto"]["updates"],
        "auto_reason": auto.reason,
        "auto_choose_s": choose_s,
        "max_abs_diff_jacobi": max_diff("jacobi"),
        "max_abs_diff_auto": max_diff("auto"),
        "compile_s": compile_s,
        "rounds_s": times,
    }


def main(argv=None):
    args = parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if args.workdir:
        model, cfg = trained_model(args.workdir)
        image_shape = model.image_shape
    else:
        image_shape = tuple(int(s) for s in args.image_shape.split(","))
        model, cfg = random_model(args, image_shape)
    if not isinstance(model, TarFlow):
        raise ConfigError(f"bench.sampling measures TarFlow's samplers, not {cfg['name']}")
    model.check_guidance(args.guidance)
    load_before = os.getloadavg()
    results = []
    for batch in batches:
        results.append(run_batch(model, batch, args))
        fields = ("batch_size", "sequential_s", "jacobi_s", "auto_s", "auto_methods")
        print(json.dumps({k: results[-1][k] for k in fields}), flush=True)
    h, w, c = image_shape
    case = args.case or (
        f"{h}x{w}x{c}_p{model.patch_size}_w{cfg.get('width')}_{model.num_blocks}x"
        f"{cfg.get('layers_per_block')}"
        + (f"_g{args.guidance:g}" if args.guidance else "")
        + ("_trained" if args.workdir else "")
    )
    record = {
        "case": case,
        "model": describe_model(cfg),
        "image_shape": list(image_shape),
        "num_tokens": model.num_tokens,
        "weights": f"trained ({args.workdir})" if args.workdir else (
            f"random, output layers scaled to std {args.output_std:g}"
        ),
        "parameters": sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param))),
        "guidance": args.guidance,
        "temperature": args.temperature,
        "jacobi": {"tol": args.jacobi_tol, "max_iters": args.jacobi_max_iters,
                   "chunk": args.jacobi_chunk},
        "rounds": args.rounds,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()][:1],
        "results": results,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    line = json.dumps(record)
    if args.out:
        write_record(args.out, f"tarflow_sampling_{case}.json", record)
    print(line)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:  # a bad --field or --workdir: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
