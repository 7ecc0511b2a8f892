"""Throughput of the reference Jet: big_vision's own ``big_vision.models.proj.jet.jet.Model``
(JAX, Flax linen).

The model is imported from a checkout of https://github.com/google-research/big_vision kept
OUTSIDE this repository (nothing of it is copied here): ``--reference=DIR``, by default the
environment variable ``FLOWS_BIG_VISION`` or else ``/work/refs/google-research+big_vision``;
DIR must hold ``big_vision/models/proj/jet/jet.py``. It runs in a venv with jax, flax, optax,
einops, absl-py, ml_collections, numpy and scipy (``/work/refvenv-bv``). big_vision's utilities
import ``tensorflow.io.gfile`` at import time, which the model never calls: without
TensorFlow installed, an empty stand-in module is registered for that import (after flax's
own file layer has been imported, which then keeps its native file calls).

Defaults: patch 2, 8 couplings of depth 1, width 128, 4 heads, couplings repeating
channels x4 then spatial ("ccccs", big_vision's ImageNet configs' order), 28x28x1, batch 64,
float32. Measured after warm-up, in the timing protocol of ``bench.peer_common``, with the
steps of big_vision's Jet trainer (``trainers/proj/jet/train.py``):

  train_images_per_s   one jit-compiled step: images on [-1, 1] plus uniform noise of one
                       level, ``model.apply(..., method=model.forward)``, the trainer's
                       bits/dim (Gaussian NLL + log 127.5 per dimension - logdet), gradient of
                       the trainable parameters (the ``FREEZE_ME`` coupling projections stay
                       fixed, as the trainer's schedule keeps them), ``optax.adam`` update
  eval_images_per_s    the forward pass and per-image bits/dim, jit-compiled
  sample_images_per_s  ``model.apply(z, method=model.inverse)`` on standard normals, jit-compiled

XLA:CPU runs on every core (``--threads`` records that) or, with ``--threads=1``, on one
(``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` added to XLA_FLAGS).
The record has the trainable parameter count (``config.n_params``), the training step's
compile time and XLA's FLOP count of it (which counts the body of big_vision's ``nn.scan``
over couplings once).

Prints one JSON record as the last line (``--out DIR`` also writes
``DIR/jet_peer_<case>.json``). From the repository root:

  /work/refvenv-bv/bin/python -m bench.jet_peer
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import types

from bench import peer_common

DEFAULT_REFERENCE = os.environ.get("FLOWS_BIG_VISION", "/work/refs/google-research+big_vision")
MODEL_FILE = "big_vision/models/proj/jet/jet.py"
ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
KINDS = ("channels", "spatial")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    peer_common.add_common_args(p, image_shape="28,28,1")
    p.add_argument("--reference", default=DEFAULT_REFERENCE, help="big_vision checkout")
    p.add_argument("--patch_size", type=int, default=2, help="big_vision's ps")
    p.add_argument("--num_couplings", type=int, default=8, help="big_vision's depth")
    p.add_argument("--block_depth", type=int, default=1)
    p.add_argument("--width", type=int, default=128, help="big_vision's emb_dim")
    p.add_argument("--num_heads", type=int, default=4)
    p.add_argument("--mlp_ratio", type=int, default=4, help="must be 4 (ViT's default)")
    p.add_argument(
        "--coupling_pattern",
        default="channels,channels,channels,channels,spatial",
        help="big_vision's kinds, comma-separated",
    )
    p.add_argument(
        "--spatial_splits",
        default="checkerboard,checkerboard-inv",
        help="big_vision's spatial_coupling_projs, comma-separated",
    )
    args = p.parse_args(argv)
    if args.mlp_ratio != 4:
        p.error("big_vision's Jet networks use the ViT MLP's default width, 4 x width")
    kinds = tuple(k.strip() for k in args.coupling_pattern.split(",") if k.strip())
    if not kinds or not set(kinds) <= set(KINDS):
        p.error(f"--coupling_pattern takes a comma-separated list of {KINDS}")
    if args.threads not in (1, os.cpu_count()):
        p.error("XLA:CPU runs on every core or (--threads=1) on one")
    return p, args, kinds


def import_jet(reference: str):
    """big_vision's jet module; an empty ``tensorflow.io.gfile`` answers big_vision's import
    of it when TensorFlow is absent, and is taken out of ``sys.modules`` again afterwards
    (einops would otherwise take it for TensorFlow)."""
    sys.path.insert(0, reference)
    import flax.io  # noqa: F401  (reads whether TensorFlow exists before the stand-in below)

    try:
        import tensorflow  # noqa: F401

        stand_in = {}
    except ImportError:
        tf = types.ModuleType("tensorflow")
        tf.io = types.ModuleType("tensorflow.io")
        tf.io.gfile = types.ModuleType("tensorflow.io.gfile")
        stand_in = {"tensorflow": tf, "tensorflow.io": tf.io, "tensorflow.io.gfile": tf.io.gfile}
    sys.modules.update(stand_in)
    try:
        from big_vision.models.proj.jet import jet
    finally:
        for name in stand_in:
            del sys.modules[name]
    return jet


def main(argv=None):
    p, args, kinds = parse_args(argv)
    height, width, channels = peer_common.image_shape(p, args)
    modes = peer_common.parse_modes(p, args)
    reference = peer_common.reference_dir(p, args, MODEL_FILE)
    if args.threads == 1 and ONE_THREAD_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
        # Read when the CPU client starts, at the first computation below.
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " " + ONE_THREAD_XLA_FLAGS
    timings = peer_common.Timings(args, modes)
    jet = import_jet(reference)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import traverse_util

    model = jet.Model(
        depth=args.num_couplings,
        block_depth=args.block_depth,
        emb_dim=args.width,
        num_heads=args.num_heads,
        ps=args.patch_size,
        kinds=kinds,
        channels_coupling_projs=("random",),
        spatial_coupling_projs=tuple(s.strip() for s in args.spatial_splits.split(",")),
    )
    bs = args.batch_size
    num_dims = height * width * channels
    key = jax.random.PRNGKey(args.seed)
    k_data, k_init, k_run = jax.random.split(key, 3)
    data = jax.random.randint(k_data, (bs, height, width, channels), 0, 256, jnp.int32)
    images = data.astype(jnp.float32) / 127.5 - 1.0  # value_range(-1, 1)
    params = model.init(k_init, images, method=model.forward)["params"]
    flat = traverse_util.flatten_dict(params, sep="/")
    frozen = {k: v for k, v in flat.items() if "FREEZE_ME" in k}
    trainable = {k: v for k, v in flat.items() if "FREEZE_ME" not in k}
    n_params = sum(int(np.prod(v.shape)) for v in trainable.values())

    def full(trainable):
        return traverse_util.unflatten_dict({**trainable, **frozen}, sep="/")

    def bits(trainable, key):
        noise = jax.random.uniform(key, images.shape, minval=0.0, maxval=1.0 / 127.5)
        z, logdet = model.apply({"params": full(trainable)}, images + noise, method=model.forward)
        nll = 0.5 * z**2 + 0.5 * math.log(2 * math.pi) + math.log(127.5)
        nll = jnp.sum(nll, axis=tuple(range(1, z.ndim)))
        return (nll - logdet) / (math.log(2) * num_dims)

    tx = optax.adam(args.lr)

    def train_fn(trainable, opt_state, key):
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(lambda t: jnp.mean(bits(t, sub)))(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, key, loss

    def sample_fn(trainable, key):
        z = jax.random.normal(key, (bs, height, width, channels))
        return model.apply({"params": full(trainable)}, z, method=model.inverse)[0]

    opt_state = tx.init(trainable)
    t0 = time.perf_counter()
    train_c = jax.jit(train_fn, donate_argnums=(0, 1)).lower(trainable, opt_state, k_run).compile()
    compile_s = time.perf_counter() - t0
    cost = train_c.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_gflop = cost.get("flops", 0.0) / 1e9 if cost else None
    eval_c = jax.jit(bits).lower(trainable, k_run).compile() if "eval" in modes else None
    sample_c = jax.jit(sample_fn).lower(trainable, k_run).compile() if "sample" in modes else None

    state = [trainable, opt_state, k_run]
    losses = []

    def train_step():
        t, o, k, loss = train_c(*state)
        state[:] = [t, o, k]
        losses.append(float(loss))  # waits for the step

    timings.run("train", train_step)
    trainable = state[0]
    timings.run("eval", lambda: eval_c(trainable, k_run).block_until_ready())
    timings.run("sample", lambda: sample_c(trainable, k_run).block_until_ready())
    measured = timings.fields()

    pattern = "".join(k[0] for k in kinds)
    case = args.case or (
        f"{height}x{width}x{channels}_p{args.patch_size}_{args.num_couplings}x{args.block_depth}"
        f"_w{args.width}_h{args.num_heads}_{pattern}_b{bs}"
    )
    record = {
        "peer": "big-vision-jet",
        "case": case,
        **measured,
        "compile_s": round(compile_s, 2),
        "xla_train_gflop_per_step": peer_common.rnd(xla_gflop, 3),
        "config": {
            "image_shape": [height, width, channels],
            "batch_size": bs,
            "patch_size": args.patch_size,
            "num_couplings": args.num_couplings,
            "block_depth": args.block_depth,
            "width": args.width,
            "num_heads": args.num_heads,
            "mlp_ratio": 4,
            "coupling_pattern": ",".join(kinds),
            "spatial_splits": args.spatial_splits,
            "optimizer": f"optax.adam(lr={args.lr})",
            "n_params": n_params,
            "n_frozen_projection_entries": sum(int(np.prod(v.shape)) for v in frozen.values()),
            "reference": reference,
        },
        "first_loss_bits_per_dim": round(losses[0], 4) if losses else None,
        "last_loss_bits_per_dim": round(losses[-1], 4) if losses else None,
        "threads": args.threads,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        **peer_common.common_record_fields(),
    }
    peer_common.emit(record, args.out, f"jet_peer_{case}.json")


if __name__ == "__main__":
    main()
