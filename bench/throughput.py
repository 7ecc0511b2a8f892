"""Throughput, compile time and memory of a jit-compiled model of any family, on one device.

``--model`` names a registered family (``flows.models.registry``: glow, jet, tarflow, ...),
built by ``build_model`` like training does; ``--field key=value`` (repeatable) sets a field
of its ``config.model`` (values read as Python literals). For Glow the flags below
(``--num_levels``, ``--num_steps``, ...) set its fields too.

Measures, after data-dependent initialisation (``model.initialize``, as training does;
without ActNorm's, deep Glows on random data go NaN at lr 1e-3):

  train_images_per_s   one jit-compiled step: dequantize random uint8 data, log-prob (mean
                       bits/dim), gradient w.r.t. every ``nnx.Param``, optax Adam update
  eval_images_per_s    dequantize + log-prob, jit-compiled
  sample_images_per_s  ``model.sample(batch_size)`` at temperature 1, jit-compiled
  sample_guided_images_per_s  conditional models with ``--guidance=w > 0``: the same with
                       classifier-free guidance weight w

A conditional model (``--field conditional=True``, 10 classes) is trained, evaluated and
sampled with random labels (``benchmark_labels``).
  compile_s            trace + lower + compile of the training step (the first step's cost)
  peak_rss_mb          the process's peak resident memory (``ru_maxrss``) at the end; run one
                       configuration per process (``bench/memory.py`` does) since RSS never shrinks
  train_temp_mb        XLA's own count of the training step's temporary buffers
                       (``compiled.memory_analysis()``): activations kept for the backward pass

Each throughput is the median over ``--iters`` timed calls (each waits for its result, like
the PyTorch peer's ``loss.item()``); the block is repeated ``--repeats`` times and the best
median is reported (all block medians are kept, to show the noise of a shared machine).

GFLOP/s (Glow only) use the analytic convolution count of ``bench/torch_peer.py`` (coupling
networks and invertible 1x1 convolutions; training = 3x forward), so both sides are counted
alike; every family's record has XLA's own count (``xla_train_gflop_per_step``), which
counts a loop's body once: for families whose depth is a ``lax.scan`` (TarFlow, Jet) it
undercounts the step by about the number of scanned blocks.

The last line printed is the JSON record; ``--out DIR`` also writes ``DIR/jax_<case>.json``.

  python -m bench.throughput --image_shape=32,32,1 --num_levels=3 --num_steps=8 \
      --hidden_channels=128 --batch_size=64
  python -m bench.throughput --model=tarflow --image_shape=28,28,1 --field patch_size=4 \
      --field width=128 --field num_blocks=4 --field layers_per_block=4

Memory pages: XLA:CPU allocates a step's temporary buffers afresh on every call, and with
4 KiB pages the kernel's page faults on them cost autodiff training ~20% of a step (the
stacked activations are ~250 MB at K=8). By default the script re-runs itself under
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc then asks for transparent huge pages for its
large blocks; ``--no-hugepages`` to measure without). ``bench.paired`` runs the reference
with the same setting, and the record keeps it.

Kernels and dtypes: ``--conv_impl`` and ``--compute_dtype`` are Glow's fields of the same
names (the other families take ``--field compute_dtype=...``); ``auto`` (the default for
``--conv_impl``) is resolved by ``flows.nn.backend`` when the
model is built, and the record's ``config`` holds the resolved choice, what was asked
(``*_requested``) and the one-line reason (``*_reason``). ``--conv_impl=lax`` runs the
networks on ``lax.conv_general_dilated`` with autodiff instead of the custom-VJP GEMMs
(``flows.nn.conv.conv2d_same``), to show what those buy on CPU.
Diagnostics: ``--hlo_convs`` prints the training step's compiled convolutions by layout.
"""

from __future__ import annotations

import argparse
import ast
import collections
import datetime
import functools
import json
import os
import platform
import re
import resource
import sys
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bench import peer_common
from bench.records import write_record
from flows.errors import ConfigError
from flows.likelihood import bits_per_dim, dequantize
from flows.models import build_model
from flows.models.base import is_conditional
from flows.models.registry import describe_model, get_family
from flows.nn.backend import COMPUTE_DTYPES, CONV_IMPLS

NUM_BINS_8BIT = 256
NUM_CLASSES = 10  # of a conditional model (random labels)


def glow_forward_flop_per_image(image_shape, num_levels, num_steps, hidden_channels):
    """Analytic FLOPs (2 per multiply-add) of one Glow forward pass for one image.

    The same count as ``bench/torch_peer.py``: per step at resolution HxW with C channels, the
    coupling net costs 2*HW*(9*c_in*h + h*h + 9*h*c_out) and the 1x1 convolution 2*HW*C*C.
    Split priors, ActNorm and elementwise work are not counted.
    """
    height, width, c0 = image_shape
    h = hidden_channels
    total = 0
    for level in range(1, num_levels + 1):
        hw = (height // 2**level) * (width // 2**level)
        c = c0 * 2 ** (level + 1)
        c_in = (c + 1) // 2
        c_out = 2 * (c // 2)
        coupling = 2 * hw * (9 * c_in * h + h * h + 9 * h * c_out)
        conv1x1 = 2 * hw * c * c
        total += num_steps * (coupling + conv1x1)
    return total


def analytic_forward_flop_per_image(args, image_shape):
    """Glow's analytic forward FLOPs per image; None for other families (XLA counts theirs)."""
    if args.model != "glow":
        return None
    return glow_forward_flop_per_image(
        image_shape, args.num_levels, args.num_steps, args.hidden_channels
    )


# -- compiled-HLO inspection ------------------------------------------------------------------
_CONV_RE = re.compile(r"=\s*(\S+)\s+convolution\(.*?dim_labels=([\w>_-]+)")
FAST_CONV_LAYOUT = "b01f_01io->b01f"  # NHWC x HWIO -> NHWC: XLA:CPU's Eigen/oneDNN kernel


def hlo_convolutions(hlo_text: str) -> dict[str, int]:
    """Count of ``convolution`` instructions in HLO text by their ``dim_labels``.

    On XLA:CPU, ``b01f_01io->b01f`` (NHWC input, HWIO kernel, NHWC output) is lowered to the
    fast convolution kernel; other layouts take a slow generic loop nest.
    """
    counts = collections.Counter()
    for line in hlo_text.splitlines():
        m = _CONV_RE.search(line)
        if m:
            counts[m.group(2)] += 1
    return dict(counts)


# -- the model and the steps ------------------------------------------------------------------
def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a string field ('spline', 'linear', ...)


def model_config(args) -> dict:
    """``config.model`` of the benchmarked model: Glow's flags (for ``--model=glow``), then
    every ``--field key=value``."""
    fields = {}
    if args.model == "glow":
        fields = {
            "num_levels": args.num_levels,
            "num_steps": args.num_steps,
            "hidden_channels": args.hidden_channels,
            "backprop": args.backprop,
            "compute_dtype": args.compute_dtype,
            "remat_coupling_nets": args.remat_nets,
            "conv_impl": args.conv_impl,
        }
    for item in args.field:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--field takes key=value, got {item!r}")
        fields[key.strip()] = _literal(value.strip())
    get_family(args.model)  # a one-line error for an unknown family
    return {"name": args.model, **fields}


def benchmark_labels(model, batch_size: int, seed: int):
    """Random labels in ``[0, NUM_CLASSES)`` for a conditional model (``--field
    conditional=True``), the same on every call; None for p(x)."""
    if not is_conditional(model):
        return None
    key = jax.random.fold_in(jax.random.key(seed), 1)
    return jax.random.randint(key, (batch_size,), 0, NUM_CLASSES, jnp.int32)


def build(args, image_shape, model_cfg):
    model = build_model(model_cfg, image_shape, NUM_CLASSES, rngs=nnx.Rngs(args.seed))
    key = jax.random.key(args.seed)
    k_data, k_init, k_run = jax.random.split(key, 3)
    data = jax.random.randint(
        k_data, (args.batch_size, *image_shape), 0, NUM_BINS_8BIT, jnp.int32
    ).astype(jnp.uint8)

    @nnx.jit
    def initialize(model, x, labels):
        model.initialize(x, context=labels)

    labels = benchmark_labels(model, args.batch_size, args.seed)
    initialize(model, dequantize(k_init, data, NUM_BINS_8BIT), labels)
    return model, data, k_run


def make_steps(model, tx, num_dims, batch_size, *, labels=None):
    """``(params, train_step, eval_step, sample_step)``; a conditional model's steps use
    ``labels`` (``benchmark_labels``), and ``sample_step(params, key, guidance)`` then takes a
    classifier-free guidance weight (a static Python float; 0: plain samples)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def mean_bpd(params, key, data):
        m = nnx.merge(graphdef, params, rest)
        x = dequantize(key, data, NUM_BINS_8BIT)
        return jnp.mean(bits_per_dim(m.log_prob(x, context=labels), num_dims, NUM_BINS_8BIT))

    def train_step(params, opt_state, key, data):
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(mean_bpd)(params, sub, data)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, loss

    def eval_step(params, key, data):
        m = nnx.merge(graphdef, params, rest)
        return m.log_prob(dequantize(key, data, NUM_BINS_8BIT), context=labels)

    def sample_step(params, key, guidance=0.0):
        m = nnx.merge(graphdef, params, rest)
        return m.sample(batch_size, key, context=labels, guidance=guidance)

    return params, train_step, eval_step, sample_step


def compile_timed(fn, *args, donate=()):
    t0 = time.perf_counter()
    lowered = jax.jit(fn, donate_argnums=donate).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return compiled, t2 - t0, t1 - t0


def measure(fn, batch_size, warmup, iters, repeats):
    """Best-of-repeats median throughput (images/s) and every block's median throughput
    (``bench.peer_common.measure``: the reference harnesses' protocol too)."""
    best, blocks, _ = peer_common.measure(fn, batch_size, warmup, iters, repeats)
    return best, [ips for ips, _ in blocks]


def _mb(nbytes):
    return round(nbytes / 2**20, 1)


def memory_record(compiled):
    try:
        ma = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return {}
    if ma is None:
        return {}
    return {
        "temp_mb": _mb(ma.temp_size_in_bytes),
        "argument_mb": _mb(ma.argument_size_in_bytes),
        "output_mb": _mb(ma.output_size_in_bytes),
        "generated_code_mb": _mb(ma.generated_code_size_in_bytes),
    }


def xla_flops(compiled):
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image_shape", default="32,32,1", help="H,W,C")
    p.add_argument("--model", default="glow", help="a registered model family")
    p.add_argument(
        "--field",
        action="append",
        default=[],
        help="key=value: a field of config.model (repeatable; a Python literal or a word)",
    )
    p.add_argument("--num_levels", type=int, default=3, help="L")
    p.add_argument("--num_steps", type=int, default=8, help="K, steps per level")
    p.add_argument("--hidden_channels", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument(
        "--backprop",
        default="autodiff",
        choices=("autodiff", "checkpoint", "invertible"),
        help="how the K steps of a level are differentiated (Glow(backprop=...))",
    )
    p.add_argument(
        "--conv_impl",
        default="auto",
        choices=CONV_IMPLS,
        help="the networks' convolutions (Glow's conv_impl): gemm (custom-VJP matrix "
        "products), lax (lax convolutions, autodiff) or auto (gemm on CPU, lax on GPU/TPU)",
    )
    p.add_argument(
        "--compute_dtype",
        default="float32",
        choices=("auto", *COMPUTE_DTYPES),
        help="matrix-product dtype inside the coupling networks (Glow's compute_dtype); "
        "auto: bfloat16 only on GPU/TPU or a CPU with native bf16 dots, else float32; "
        "log-dets, priors, ActNorm and 1x1 convolutions stay float32",
    )
    p.add_argument(
        "--remat_nets",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="recompute the coupling networks' hidden activations in the backward pass "
        "(Glow's remat_coupling_nets)",
    )
    p.add_argument(
        "--only",
        default="train,eval,sample",
        help="comma-separated subset of train,eval,sample to run (memory runs use 'train')",
    )
    p.add_argument(
        "--hugepages",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="re-run under GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (see the module docstring)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=0.0,
        help="conditional models (--field conditional=True): also time sampling with this "
        "classifier-free guidance weight (sample_guided_images_per_s)",
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10, help="timed iterations per block")
    p.add_argument("--repeats", type=int, default=2, help="timed blocks; best median kept")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hlo_convs", action="store_true", help="print the compiled convolutions")
    p.add_argument("--case", default=None, help="name in the output file; derived if omitted")
    p.add_argument("--out", default=None, help="directory for jax_<case>.json")
    return p.parse_args(argv)


HUGEPAGES = "glibc.malloc.hugetlb=1"


def main(argv=None):
    args = parse_args(argv)
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if argv is None and args.hugepages and HUGEPAGES not in tunables:
        # glibc reads its tunables at start-up: re-run this command with them set.
        env = dict(os.environ, GLIBC_TUNABLES=":".join(t for t in (tunables, HUGEPAGES) if t))
        os.execve(sys.executable, [sys.executable, "-m", "bench.throughput", *sys.argv[1:]], env)
    image_shape = tuple(int(s) for s in args.image_shape.split(","))
    height, width, channels = image_shape
    only = set(args.only.split(","))
    if not only <= {"train", "eval", "sample"}:
        raise ValueError(f"--only takes train,eval,sample; got {args.only!r}")
    load_before = os.getloadavg()
    bs = args.batch_size
    num_dims = height * width * channels

    model_cfg = model_config(args)
    model, data, key = build(args, image_shape, model_cfg)
    tx = optax.adam(args.lr)
    labels = benchmark_labels(model, bs, args.seed)
    params, train_fn, eval_fn, sample_fn = make_steps(model, tx, num_dims, bs, labels=labels)
    n_params = sum(p.size for p in jax.tree.leaves(params))
    opt_state = tx.init(params)
    record = {"framework": "jax"}
    t_start = time.perf_counter()

    if "train" in only:
        train_c, compile_s, lower_s = compile_timed(
            train_fn, params, opt_state, key, data, donate=(0, 1)
        )
        convs = hlo_convolutions(train_c.as_text())
        if args.hlo_convs:
            print(json.dumps({"train_step_convolutions": convs}))
        state = [params, opt_state, key]
        losses = []

        def train_step():
            p, o, k, loss = train_c(*state, data)
            state[:] = [p, o, k]
            losses.append(float(loss))  # waits for the step, like the peer's loss.item()

        first_loss_t0 = time.perf_counter()
        train_step()
        first_step_s = time.perf_counter() - first_loss_t0
        train, train_blocks = measure(train_step, bs, args.warmup, args.iters, args.repeats)
        params = state[0]
        flops = analytic_forward_flop_per_image(args, image_shape)
        gflop_step = 3 * flops * bs / 1e9 if flops else None
        record.update(
            train_images_per_s=round(train, 2),
            compile_s=round(compile_s, 2),
            trace_lower_s=round(lower_s, 2),
            first_step_run_s=round(first_step_s, 3),
            train_gflop_per_step=round(gflop_step, 3) if gflop_step else None,
            train_gflops=round(gflop_step * train / bs, 2) if gflop_step else None,
            xla_train_gflop_per_step=(
                round(xla_flops(train_c) / 1e9, 3) if xla_flops(train_c) else None
            ),
            train_images_per_s_blocks=[round(v, 2) for v in train_blocks],
            train_memory=memory_record(train_c),
            train_step_convolutions=convs,
            train_step_all_convs_fast=set(convs) <= {FAST_CONV_LAYOUT},
            first_loss_bits_per_dim=round(losses[0], 4),
            last_loss_bits_per_dim=round(losses[-1], 4),
        )
        record["train_temp_mb"] = record["train_memory"].get("temp_mb")

    if "eval" in only:
        eval_c, eval_compile_s, _ = compile_timed(eval_fn, params, key, data)

        def eval_step():
            eval_c(params, key, data).block_until_ready()

        evals, eval_blocks = measure(eval_step, bs, args.warmup, args.iters, args.repeats)
        fwd = analytic_forward_flop_per_image(args, image_shape)
        record.update(
            eval_images_per_s=round(evals, 2),
            eval_compile_s=round(eval_compile_s, 2),
            eval_gflops=round(fwd * evals / 1e9, 2) if fwd else None,
            eval_images_per_s_blocks=[round(v, 2) for v in eval_blocks],
            eval_bits_per_dim=round(
                float(jnp.mean(bits_per_dim(eval_c(params, key, data), num_dims, 256))), 4
            ),
        )

    if "sample" in only:
        samplers = {"sample": sample_fn}
        if labels is not None and args.guidance > 0:
            samplers["sample_guided"] = functools.partial(sample_fn, guidance=args.guidance)
        for name, fn in samplers.items():
            sample_c, sample_compile_s, _ = compile_timed(fn, params, key)

            def sample_step(sample_c=sample_c):
                sample_c(params, key).block_until_ready()

            sample, blocks = measure(sample_step, bs, args.warmup, args.iters, args.repeats)
            record[f"{name}_images_per_s"] = round(sample, 2)
            record[f"{name}_compile_s"] = round(sample_compile_s, 2)
            record[f"{name}_images_per_s_blocks"] = [round(v, 2) for v in blocks]

    if args.model == "glow":
        case = args.case or (
            f"{height}x{width}x{channels}_L{args.num_levels}_K{args.num_steps}"
            f"_h{args.hidden_channels}_b{bs}"
        )
        config = {
            "image_shape": list(image_shape),
            "num_levels": args.num_levels,
            "num_steps": args.num_steps,
            "hidden_channels": args.hidden_channels,
            "batch_size": bs,
            "backprop": args.backprop,
            "conv_impl": model.conv_impl,
            "conv_impl_requested": args.conv_impl,
            "conv_impl_reason": model.conv_impl_reason,
            "compute_dtype": model.compute_dtype,
            "compute_dtype_requested": args.compute_dtype,
            "compute_dtype_reason": model.compute_dtype_reason,
            "remat_coupling_nets": args.remat_nets,
            "coupling": "affine (sigmoid(h + 2) scale)",
            "conv1x1": "LU",
            "prior": "learned Gaussian split priors + learned top prior",
        }
    else:
        fields = "_".join(f"{k}{v}" for k, v in sorted(model_cfg.items()) if k != "name")
        case = args.case or f"{args.model}_{height}x{width}x{channels}_{fields}_b{bs}"
        config = {"image_shape": list(image_shape), "batch_size": bs}
        if hasattr(model, "compute_dtype_reason"):  # the family has the field (resolved)
            config.update(
                compute_dtype=model.compute_dtype,
                compute_dtype_requested=model_cfg.get("compute_dtype", "float32"),
                compute_dtype_reason=model.compute_dtype_reason,
            )
    if labels is not None:
        config.update(num_classes=NUM_CLASSES, guidance=args.guidance or None)
    record.update(
        case=case,
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        config={
            **config,
            "model": model_cfg,
            "model_description": describe_model(model_cfg),
            "optimizer": f"optax.adam(lr={args.lr})",
            "n_params": int(n_params),
            "only": sorted(only),
        },
        timing={
            "warmup": args.warmup,
            "iters": args.iters,
            "repeats": args.repeats,
            "statistic": "best of repeats of median over iters",
            "wall_s": round(time.perf_counter() - t_start, 1),
        },
        jax=jax.__version__,
        backend=jax.default_backend(),
        device=str(jax.devices()[0].device_kind),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
        cpu_count=os.cpu_count(),
        machine=platform.machine(),
        loadavg_before=[round(v, 2) for v in load_before],
        loadavg_after=[round(v, 2) for v in os.getloadavg()],
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    line = json.dumps(record)
    if args.out:
        write_record(args.out, f"jax_{case}.json", record)
    print(line)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:  # a bad --model / --field: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
