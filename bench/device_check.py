"""A device check, ready to run on whatever accelerator is present.

    python -m bench.device_check [--smoke] [--out=FILE.json]

Run from the repository root (``python -m`` puts it on ``sys.path``, for ``bench``). Three
sections, each on the default device (``jax.devices()[0]``; with no accelerator that is the
CPU):

  registry    every entry of the bijector registry (``flows.testing.bijector_registry``, the
              one ``tests/test_bijectors.py`` runs) in float32, built and perturbed by its
              ``build``: max round-trip error, max |ld + ild| (the inverse's log-det against
              minus the forward's), max |jit - eager|, each against the registry's float32
              tolerances (the tests'). A failing entry is reported, not raised; on an
              accelerator a failing entry is re-checked under
              ``jax.default_matmul_precision('highest')`` (GPUs multiply float32 in TF32 by
              default) and both results are kept.
  glow        the CIFAR-10 Glow (L=3, K=32, 512 hidden, affine coupling, LU 1x1
              convolutions, 32x32x3), after data-dependent ActNorm init on one fixed batch of
              random 8-bit data (fixed seed, fixed dequantization noise): round-trip error and
              bits/dim of that batch on the device (default and 'highest' matmul precision)
              and on the CPU (``jax.devices('cpu')[0]``, the same parameters copied there with
              ``jax.device_put``), at init and after ``--train_steps`` jit-compiled training
              steps on the device (``flows.train``: ``make_train_step``, ``density_loss``,
              ``make_optimizer``; Adamax as configs/glow_cifar10.py, short warmup) on that
              same batch with fresh dequantization noise each step. Target |delta| <= 1e-4
              bits/dim. With no accelerator the device is the CPU and the comparison is
              trivially equal (the record says so).
  throughput  case (b) at K=32, hidden 512: 32x32x3, batch 32, train / eval / sample
              images per second with ``bench/throughput.py``'s steps and timing
              (``make_steps``, ``compile_timed``, ``measure``), on the glow section's model.

``--smoke``: a tiny Glow, 2 training steps, two registry entries (the test suite runs it).
``--conv_impl`` / ``--compute_dtype`` are passed to ``Glow`` only when given (and only if
this checkout's ``Glow`` takes them). Every number in the record carries its unit in its
name (``_s``, ``_bits_per_dim``, ``_images_per_s``, ``_mb``; errors are in the units of the
layer's input, x on [0, 1) for the Glow). The last line printed is the JSON record; ``--out``
also writes it to a file. The exit status is 0 when every section ran (checks that fail are
in the record: ``passed``), 1 when a section raised. With ``--out`` the record is rewritten
after every section (``complete: false`` until the end), so a run cut off by a timeout keeps
the sections it finished.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import jaxlib
import ml_collections
import numpy as np
import optax
from flax import nnx

from bench import throughput
from bench.records import write_record
from flows.likelihood import bits_per_dim, dequantize_with_noise
from flows.models.glow import Glow
from flows.provenance import cpu_info
from flows.testing.bijector_registry import (
    JIT_EAGER_ATOL,
    JIT_EAGER_RTOL,
    LOG_DET_ATOL,
    LOG_DET_RTOL,
    REGISTRY,
    ROUND_TRIP_ATOL,
    build,
    round_trip,
)
from flows.train.objectives import density_loss
from flows.train.optim import make_optimizer
from flows.train.state import TrainState
from flows.train.step import make_train_step

NUM_BINS = 256
BPD_TARGET = 1e-4
SMOKE_ENTRIES = "actnorm_image,conv1x1_lu_image"

FULL = dict(
    image_shape="32,32,3",
    num_levels=3,
    num_steps=32,
    hidden_channels=512,
    batch_size=32,
    train_steps=100,
    warmup_steps=10,
    tp_warmup=2,
    tp_iters=10,
    tp_repeats=2,
    tp_modes="train,eval,sample",
    entries="all",
)
SMOKE = dict(
    image_shape="4,4,3",
    num_levels=1,
    num_steps=1,
    hidden_channels=4,
    batch_size=2,
    train_steps=2,
    warmup_steps=1,
    tp_warmup=1,
    tp_iters=2,
    tp_repeats=1,
    tp_modes="train,eval",  # sampling's step is bench.throughput's, tested there
    entries=SMOKE_ENTRIES,
)


def log(msg):
    print(f"device_check: {msg}", flush=True)


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:1000]


# -- platform ---------------------------------------------------------------------------------
def _nvidia_smi() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def platform_info() -> dict:
    devices = jax.devices()
    info = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "default_matmul_precision": jax.config.jax_default_matmul_precision,
        "cpu_model": cpu_info()["model"],
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if info["backend"] == "gpu":
        info["nvidia_smi"] = _nvidia_smi()
    return info


def _device_memory_mb() -> dict:
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # not every backend has memory stats
        return {}
    return {
        f"{k}_mb": round(stats[k] / 2**20, 1)
        for k in ("bytes_limit", "peak_bytes_in_use", "bytes_in_use")
        if k in stats
    }


# -- registry ---------------------------------------------------------------------------------
def _max(a) -> float:
    return float(np.max(a)) if np.size(a) else 0.0


def check_entry(entry) -> dict:
    layer, x, ctx = build(entry)
    z, ld, x2, ild = jitted = nnx.jit(round_trip)(layer, x, ctx)
    eager = round_trip(layer, x, ctx)
    x, ld, ild, x2 = (np.asarray(a, np.float64) for a in (x, ld, ild, x2))
    rt = _max(np.abs(x2 - x))
    ld_sum = np.abs(ld + ild)
    ld_excess = _max(ld_sum - (LOG_DET_ATOL + LOG_DET_RTOL * np.abs(ld)))
    je_diff, je_excess = 0.0, -math.inf
    for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        d = np.abs(a - b)
        je_diff = max(je_diff, _max(d))
        je_excess = max(je_excess, _max(d - (JIT_EAGER_ATOL + JIT_EAGER_RTOL * np.abs(b))))
    out = {
        "round_trip_max_abs_err": rt,
        "log_det_sum_max_abs": _max(ld_sum),
        "jit_eager_max_abs_diff": je_diff,
        "round_trip_ok": rt <= ROUND_TRIP_ATOL,
        "log_det_ok": ld_excess <= 0,
        "jit_eager_ok": je_excess <= 0,
        "on_device": str(next(iter(jax.tree.leaves(jitted)[0].devices()))),
    }
    out["passed"] = out["round_trip_ok"] and out["log_det_ok"] and out["jit_eager_ok"]
    return out


def registry_section(entries: str) -> dict:
    registry = REGISTRY
    names = [e.name for e in registry]
    if entries != "all":
        wanted = entries.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise ValueError(f"unknown registry entries {unknown}; known: {names}")
        registry = [e for e in registry if e.name in wanted]
    retry_highest = jax.default_backend() != "cpu"
    results = []
    for entry in registry:
        t0 = time.perf_counter()
        try:
            res = check_entry(entry)
        except Exception as e:  # a failing entry is reported, not raised
            res = {"passed": False, "error": _error(e)}
        if retry_highest and not res["passed"] and "error" not in res:
            try:
                with jax.default_matmul_precision("highest"):
                    res["highest_precision"] = check_entry(entry)
            except Exception as e:
                res["highest_precision"] = {"passed": False, "error": _error(e)}
        res = {"name": entry.name, **res, "wall_s": round(time.perf_counter() - t0, 2)}
        results.append(res)
        log(
            f"registry {entry.name}: {'pass' if res['passed'] else 'FAIL'} "
            f"rt={res.get('round_trip_max_abs_err', float('nan')):.2e} "
            f"|ld+ild|={res.get('log_det_sum_max_abs', float('nan')):.2e} "
            f"jit-eager={res.get('jit_eager_max_abs_diff', float('nan')):.2e}"
            + (f" ({res['error']})" if "error" in res else "")
        )
    failed = [r["name"] for r in results if not r["passed"]]
    return {
        "tolerances": {
            "round_trip_atol": ROUND_TRIP_ATOL,
            "log_det_rtol": LOG_DET_RTOL,
            "log_det_atol": LOG_DET_ATOL,
            "jit_eager_rtol": JIT_EAGER_RTOL,
            "jit_eager_atol": JIT_EAGER_ATOL,
        },
        "num_entries": len(results),
        "num_passed": len(results) - len(failed),
        "failed": failed,
        "entries": results,
        "passed": not failed,
    }


# -- the Glow -----------------------------------------------------------------------------------
def glow_kwargs(args) -> dict:
    """``conv_impl`` / ``compute_dtype`` for ``Glow``: only those given on the command line."""
    return {
        name: getattr(args, name)
        for name in ("conv_impl", "compute_dtype")
        if getattr(args, name) is not None
    }


class GlowSetup:
    """The model (split into graphdef / params / buffers, ActNorm initialised on the device)
    and the fixed batch: uint8 images and their dequantization x (fixed noise), in numpy so
    both devices get the same bits."""

    def __init__(self, args, kw):
        self.image_shape = tuple(int(s) for s in args.image_shape.split(","))
        self.num_dims = math.prod(self.image_shape)
        model = Glow(
            self.image_shape,
            num_levels=args.num_levels,
            num_steps=args.num_steps,
            hidden_channels=args.hidden_channels,
            coupling="affine",
            permutation="conv1x1_lu",
            rngs=nnx.Rngs(args.seed),
            **kw,
        )
        rng = np.random.default_rng(args.seed)
        shape = (args.batch_size, *self.image_shape)
        self.images = rng.integers(0, NUM_BINS, shape, dtype=np.uint8)
        noise = rng.random(shape, dtype=np.float32)
        with jax.default_device(jax.devices("cpu")[0]):
            self.x = np.asarray(dequantize_with_noise(self.images, noise, NUM_BINS))
        self.graphdef, params, buffers = nnx.split(model, nnx.Param, ...)
        graphdef = self.graphdef

        @jax.jit
        def initialize(params, buffers, x):
            m = nnx.merge(graphdef, params, buffers)
            m.initialize(x)
            return nnx.split(m, nnx.Param, ...)[1:]

        t0 = time.perf_counter()
        self.params, self.buffers = initialize(params, buffers, jnp.asarray(self.x))
        jax.block_until_ready(self.params)
        self.init_s = time.perf_counter() - t0
        self.n_params = int(sum(p.size for p in jax.tree.leaves(self.params)))

        def bpd(params, buffers, x):
            m = nnx.merge(graphdef, params, buffers)
            return bits_per_dim(m.log_prob(x), self.num_dims, NUM_BINS)

        def round_trip(params, buffers, x):
            m = nnx.merge(graphdef, params, buffers)
            latents, ld = m.forward_and_log_det(x)
            x2, ild = m.inverse_and_log_det(latents)
            return jnp.max(jnp.abs(x2 - x)), jnp.max(jnp.abs(ld + ild)), jnp.max(jnp.abs(ld))

        self.bpd = jax.jit(bpd)
        self.round_trip = jax.jit(round_trip)

    def compare(self, params, buffers) -> dict:
        """Round trip on the device; bits/dim of the fixed batch on the device (default and
        'highest' matmul precision) and on the CPU, on the same parameters."""
        out = {}
        x_dev = jnp.asarray(self.x)
        t0 = time.perf_counter()
        rt, ld_sum, ld_abs = (float(v) for v in self.round_trip(params, buffers, x_dev))
        out.update(
            round_trip_max_abs_err=rt,
            log_det_sum_max_abs=ld_sum,
            log_det_max_abs=ld_abs,
            round_trip_s=round(time.perf_counter() - t0, 2),
        )
        t0 = time.perf_counter()
        dev = np.asarray(self.bpd(params, buffers, x_dev), np.float64)
        out["device_bpd_s"] = round(time.perf_counter() - t0, 2)
        dev_hi = None
        if jax.default_backend() != "cpu":  # XLA:CPU multiplies float32 in float32 anyway
            with jax.default_matmul_precision("highest"):
                dev_hi = np.asarray(self.bpd(params, buffers, x_dev), np.float64)
        cpu_device = jax.devices("cpu")[0]
        t0 = time.perf_counter()
        p_cpu, b_cpu, x_cpu = jax.device_put((params, buffers, self.x), cpu_device)
        cpu = np.asarray(self.bpd(p_cpu, b_cpu, x_cpu), np.float64)
        out["cpu_bpd_s"] = round(time.perf_counter() - t0, 2)
        out.update(
            device_bits_per_dim=float(dev.mean()),
            device_highest_bits_per_dim=None if dev_hi is None else float(dev_hi.mean()),
            cpu_bits_per_dim=float(cpu.mean()),
            abs_delta_bits_per_dim=float(abs(dev.mean() - cpu.mean())),
            abs_delta_highest_bits_per_dim=(
                None if dev_hi is None else float(abs(dev_hi.mean() - cpu.mean()))
            ),
            max_example_abs_delta_bits_per_dim=float(np.max(np.abs(dev - cpu))),
        )
        out["delta_within_target"] = out["abs_delta_bits_per_dim"] <= BPD_TARGET
        out["finite"] = bool(np.all(np.isfinite(dev)) and np.all(np.isfinite(cpu)))
        return out


def optim_config(args):
    c = ml_collections.ConfigDict()
    c.name, c.lr, c.warmup_steps, c.schedule = "adamax", args.lr, args.warmup_steps, "constant"
    c.b1, c.b2, c.eps, c.grad_clip_norm = 0.9, 0.999, 1e-8, 0.0
    return c


def glow_section(args, setup: GlowSetup) -> dict:
    rec = {"init_s": round(setup.init_s, 2), "n_params": setup.n_params}
    rec["at_init"] = setup.compare(setup.params, setup.buffers)
    log(f"glow at init: {json.dumps(rec['at_init'])}")

    oc = optim_config(args)
    tx = make_optimizer(oc, args.train_steps)
    model = nnx.merge(setup.graphdef, setup.params, setup.buffers)
    state = TrainState.create(model, tx, jax.random.key(args.seed + 1), ema=False)
    batch = {
        "image": jnp.asarray(setup.images),
        "label": jnp.zeros((args.batch_size,), jnp.int32),
    }
    step = jax.jit(make_train_step(setup.graphdef, density_loss(NUM_BINS), tx), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    losses = []
    t0 = time.perf_counter()
    for _ in range(args.train_steps):
        state, metrics = compiled(state, batch)
        losses.append(metrics["loss"])
    losses = [float(v) for v in losses]  # waits for the last step
    run_s = time.perf_counter() - t0
    rec["train"] = {
        "steps": args.train_steps,
        "optimizer": dict(oc),
        "data": "the fixed batch, fresh dequantization noise each step",
        "compile_s": round(compile_s, 2),
        "run_s": round(run_s, 2),
        "step_s": round(run_s / max(args.train_steps, 1), 4),
        "first_loss_bits_per_dim": losses[0] if losses else None,
        "last_loss_bits_per_dim": losses[-1] if losses else None,
        "nonfinite_steps": int(metrics["nonfinite_steps"]) if losses else 0,
    }
    log(f"glow train: {json.dumps(rec['train'])}")
    setup.params, setup.buffers = state.params, state.buffers
    rec["after_training"] = setup.compare(state.params, state.buffers)
    log(f"glow after {args.train_steps} steps: {json.dumps(rec['after_training'])}")
    both = (rec["at_init"], rec["after_training"])
    rec["passed"] = all(r["delta_within_target"] and r["finite"] for r in both)
    return rec


def throughput_section(args, setup: GlowSetup) -> dict:
    """``bench.throughput``'s training / evaluation / sampling steps and timing on the glow
    section's model (its parameters after training, when that section ran)."""
    bs = args.batch_size
    params = jax.tree.map(jnp.copy, setup.params)  # the train step donates its inputs
    model = nnx.merge(setup.graphdef, params, setup.buffers)
    tx = optax.adam(args.lr)
    params, train_fn, eval_fn, sample_fn = throughput.make_steps(model, tx, setup.num_dims, bs)
    opt_state = tx.init(params)
    key = jax.random.key(args.seed + 2)
    data = jnp.asarray(setup.images)
    timing = (args.tp_warmup, args.tp_iters, args.tp_repeats)
    flops = throughput.glow_forward_flop_per_image(
        setup.image_shape, args.num_levels, args.num_steps, args.hidden_channels
    )
    modes = args.tp_modes.split(",")
    if not set(modes) <= {"train", "eval", "sample"}:
        raise ValueError(f"--tp_modes takes train,eval,sample; got {args.tp_modes!r}")
    rec = {}

    if "train" in modes:
        train_c, compile_s, _ = throughput.compile_timed(
            train_fn, params, opt_state, key, data, donate=(0, 1)
        )
        state = [params, opt_state, key]

        def train_step():
            p, o, k, loss = train_c(*state, data)
            state[:] = [p, o, k]
            float(loss)

        train, blocks = throughput.measure(train_step, bs, *timing)
        gflop_step = 3 * flops * bs / 1e9
        rec.update(
            train_images_per_s=round(train, 2),
            train_compile_s=round(compile_s, 2),
            train_gflop_per_step=round(gflop_step, 3),
            train_gflops=round(gflop_step * train / bs, 2),
            train_images_per_s_blocks=[round(v, 2) for v in blocks],
            train_memory=throughput.memory_record(train_c),
        )
        params = state[0]

    if "eval" in modes:
        eval_c, eval_compile_s, _ = throughput.compile_timed(eval_fn, params, key, data)
        evals, blocks = throughput.measure(
            lambda: eval_c(params, key, data).block_until_ready(), bs, *timing
        )
        rec.update(
            eval_images_per_s=round(evals, 2),
            eval_compile_s=round(eval_compile_s, 2),
            eval_gflops=round(flops * evals / 1e9, 2),
            eval_images_per_s_blocks=[round(v, 2) for v in blocks],
        )

    if "sample" in modes:
        sample_c, sample_compile_s, _ = throughput.compile_timed(sample_fn, params, key)
        sample, blocks = throughput.measure(
            lambda: sample_c(params, key).block_until_ready(), bs, *timing
        )
        rec.update(
            sample_images_per_s=round(sample, 2),
            sample_compile_s=round(sample_compile_s, 2),
            sample_images_per_s_blocks=[round(v, 2) for v in blocks],
        )
    rec.update(
        passed=all(rec[f"{m}_images_per_s"] > 0 for m in modes),  # it ran; no target here
        modes=sorted(modes),
        timing={
            "warmup": args.tp_warmup,
            "iters": args.tp_iters,
            "repeats": args.tp_repeats,
            "statistic": "best of repeats of median over iters (bench.throughput)",
        },
    )
    log("throughput images/s: " + ", ".join(f"{m} {rec[f'{m}_images_per_s']}" for m in modes))
    return rec


# -- main ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny Glow, 2 steps, 2 registry entries")
    p.add_argument("--out", default=None, help="also write the record to this JSON file")
    p.add_argument(
        "--sections", default="registry,glow,throughput", help="subset of the three to run"
    )
    p.add_argument("--entries", default=None, help="registry entries: 'all' or name,name,...")
    p.add_argument("--image_shape", default=None, help="H,W,C (default 32,32,3)")
    p.add_argument("--num_levels", type=int, default=None, help="L (default 3)")
    p.add_argument("--num_steps", type=int, default=None, help="K (default 32)")
    p.add_argument("--hidden_channels", type=int, default=None, help="(default 512)")
    p.add_argument("--batch_size", type=int, default=None, help="(default 32)")
    p.add_argument("--train_steps", type=int, default=None, help="(default 100)")
    p.add_argument("--warmup_steps", type=int, default=None, help="lr warmup (default 10)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tp_warmup", type=int, default=None, help="throughput warmup calls")
    p.add_argument("--tp_iters", type=int, default=None, help="throughput calls per block")
    p.add_argument("--tp_repeats", type=int, default=None, help="throughput blocks")
    p.add_argument("--tp_modes", default=None, help="throughput modes (default train,eval,sample)")
    p.add_argument("--conv_impl", default=None, help="Glow(conv_impl=...); not passed if omitted")
    p.add_argument(
        "--compute_dtype", default=None, help="Glow(compute_dtype=...); not passed if omitted"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for k, v in (SMOKE if args.smoke else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    sections = args.sections.split(",")
    if not set(sections) <= {"registry", "glow", "throughput"}:
        p.error(f"--sections takes registry,glow,throughput; got {args.sections!r}")
    args.sections = sections
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    info = platform_info()
    for k in ("backend", "devices", "device_kind", "jax", "jaxlib", "cpu_model"):
        log(f"{k}: {info[k]}")
    if info.get("nvidia_smi"):
        log(f"nvidia-smi: {info['nvidia_smi']}")
    on_cpu = info["backend"] == "cpu"
    if on_cpu:
        log("no accelerator: the device is the CPU, so CPU-vs-device is trivially equal")
    kw = glow_kwargs(args)
    record = {
        "check": "device_check",
        "smoke": args.smoke,
        "platform": info,
        "cpu_vs_device": (
            "trivial: the default device is the CPU" if on_cpu else "CPU vs " + info["backend"]
        ),
        "config": {
            "image_shape": args.image_shape,
            "num_levels": args.num_levels,
            "num_steps": args.num_steps,
            "hidden_channels": args.hidden_channels,
            "batch_size": args.batch_size,
            "coupling": "affine",
            "permutation": "conv1x1_lu",
            "train_steps": args.train_steps,
            "glow_kwargs_passed": kw,
            "bpd_target": BPD_TARGET,
            "seed": args.seed,
            "sections": args.sections,
        },
    }
    errors = {}
    section_s = {}

    def run(name, fn):
        t0 = time.perf_counter()
        try:
            record[name] = fn()
        except Exception as e:
            traceback.print_exc()
            errors[name] = _error(e)
            record[name] = {"error": errors[name], "passed": False}
        section_s[name] = round(time.perf_counter() - t0, 2)
        log(f"{name}: {section_s[name]} s")
        save(complete=False)

    def save(complete):
        # Written after every section too, so a run cut off by a timeout keeps what it did.
        record.update(
            complete=complete,
            errors=errors,
            passed=not errors
            and all(record.get(s, {}).get("passed", False) for s in args.sections),
            section_s=section_s,
            wall_s=round(time.perf_counter() - t_start, 2),
            device_memory=_device_memory_mb(),
            loadavg_before=[round(v, 2) for v in load_before],
            loadavg_after=[round(v, 2) for v in os.getloadavg()],
            peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        if args.out:
            out_dir, filename = os.path.split(os.path.abspath(args.out))
            write_record(out_dir, filename, record)

    if "registry" in args.sections:
        run("registry", lambda: registry_section(args.entries))
    setup = None
    if {"glow", "throughput"} & set(args.sections):
        t0 = time.perf_counter()
        try:
            setup = GlowSetup(args, kw)
        except Exception as e:
            traceback.print_exc()
            errors["glow_setup"] = _error(e)
        section_s["glow_setup"] = round(time.perf_counter() - t0, 2)
        log(f"glow setup (build, ActNorm init): {section_s['glow_setup']} s")
    if setup is not None:
        if "glow" in args.sections:
            run("glow", lambda: glow_section(args, setup))
        if "throughput" in args.sections:
            run("throughput", lambda: throughput_section(args, setup))

    save(complete=True)
    print(json.dumps(record))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
