"""Loading a trained model back from a workdir (for evaluate, sample and compare)."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from flax import nnx

from flows.models.build import build_model
from flows.train.checkpoint import Checkpointer, CheckpointError, abstract_like
from flows.train.optim import make_optimizer
from flows.train.state import TrainState


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{workdir} is not a training workdir (no config.json)")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str, *, checkpoint: str = "best", use_ema: bool | None = None):
    """``(model, config, info)`` of a workdir's ``'best'`` (validation-selected, falling back
    to the latest when the run had no validation split) or ``'latest'`` checkpoint.

    ``info`` has ``step``, ``parameters`` ('ema' | 'raw') and ``checkpoint`` (its path).
    ``use_ema=None`` follows ``config.eval.use_ema`` when the run kept an EMA.
    """
    config = load_config(workdir)
    shape_path = os.path.join(workdir, "data_info.json")
    with open(shape_path) as f:
        data_info = json.load(f)
    model = build_model(
        config.model, data_info["image_shape"], data_info["num_classes"], rngs=nnx.Rngs(0)
    )
    tx = make_optimizer(config.optim, config.train.num_steps)
    template = TrainState.create(model, tx, jax.random.key(0), ema=config.train.ema_decay > 0)
    graphdef = nnx.graphdef(model)
    directories = {"best": "best", "latest": "checkpoints"}
    if checkpoint not in directories:
        raise ValueError(f"checkpoint must be 'best' or 'latest', got {checkpoint!r}")
    ckpt = Checkpointer(os.path.join(workdir, directories[checkpoint]))
    if ckpt.latest_step() is None and checkpoint == "best":
        ckpt.close()
        ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    if ckpt.latest_step() is None:
        raise CheckpointError(f"no checkpoint in {workdir}; train first")
    state, _ = ckpt.restore(
        abstract_like(template, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    )
    step = int(state.step)
    path = f"{ckpt.directory}/{step}"
    ckpt.close()
    if use_ema is None:
        use_ema = bool(config.eval.use_ema) and state.ema is not None
    info = {"step": step, "parameters": "ema" if use_ema else "raw", "checkpoint": path}
    return state.model(graphdef, use_ema=use_ema), config, info
