"""Loading a trained model back from a workdir (for evaluate, sample and latent tools)."""

from __future__ import annotations

import os

import jax
from flax import nnx

from flows import workdir as wd
from flows.errors import CheckpointError, ConfigError
from flows.models import build_model
from flows.train.checkpoint import Checkpointer, abstract_like
from flows.train.optim import run_optimizer
from flows.train.state import TrainState, default_use_ema, keeps_ema

CHECKPOINT_CHOICES = {"best": wd.BEST, "latest": wd.CHECKPOINTS}


def load_run(workdir: str, *, checkpoint: str = "best", use_ema: bool | None = None):
    """``(model, config, info)`` of a workdir's ``'best'`` (validation-selected, falling back
    to the latest when the run had no validation split) or ``'latest'`` checkpoint.

    ``info`` has ``checkpoint_step``, ``parameters`` ('ema' | 'raw'), ``checkpoint`` (its
    path), ``num_bins`` (the data's levels per value) and ``config_changed_at`` (the config
    changes accepted on resume, ``flows.workdir.config_changed_at``).
    ``use_ema=None`` follows ``config.eval.use_ema`` when the run kept an EMA.
    """
    if checkpoint not in CHECKPOINT_CHOICES:
        raise ConfigError(f"checkpoint must be 'best' or 'latest', got {checkpoint!r}")
    config = wd.load_config(workdir)
    data_info = wd.load_data_info(workdir)
    model = build_model(
        config.model, data_info["image_shape"], data_info["num_classes"], rngs=nnx.Rngs(0)
    )
    template = TrainState.create(
        model, run_optimizer(config), jax.random.key(0), ema=keeps_ema(config)
    )
    graphdef = nnx.graphdef(model)
    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_CHOICES[checkpoint]))
    if ckpt.latest_step() is None and checkpoint == "best":
        ckpt.close()
        ckpt = Checkpointer(os.path.join(workdir, wd.CHECKPOINTS))
    if ckpt.latest_step() is None:
        ckpt.close()
        raise CheckpointError(f"no checkpoint in {workdir}; train first")
    try:
        state, _ = ckpt.restore(
            abstract_like(template, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
        )
    finally:
        ckpt.close()
    step = int(state.step)
    if use_ema is None:
        use_ema = default_use_ema(config, state)
    info = {
        "checkpoint_step": step,
        "parameters": "ema" if use_ema else "raw",
        "checkpoint": ckpt.step_path(step),
        "num_bins": int(data_info["num_bins"]),
        "config_changed_at": wd.config_changed_at(workdir),
    }
    return state.model(graphdef, use_ema=use_ema), config, info
