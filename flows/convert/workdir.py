"""A model as a training workdir that evaluate, sample, latents and compare read: a model
converted from a reference's weights (``experiments.convert``) or exported from one of our
runs (``experiments.export``).

``write_workdir`` lays the run out as ``flows.train`` does (``flows.workdir``): the resolved
``config.json`` and ``data_info.json``, and the parameters as the ``TrainState`` of step 0
in ``checkpoints/0/`` (orbax, with the fresh optimizer state of the config, so that
``experiments.train`` on the workdir fine-tunes from these weights), plus the origin record
(``converted_from.json`` or ``exported_from.json``): where the parameters came from (for a
conversion the source, the checkpoint's path, size and sha256), the model config, the
parameter count and the provenance of the writing (``flows.provenance``). ``load_run`` then
finds no ``best/`` state and reads step 0.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil

import jax
from flax import nnx

from flows import workdir as wd
from flows.errors import CheckpointError
from flows.provenance import provenance
from flows.train.checkpoint import Checkpointer
from flows.train.optim import run_optimizer
from flows.train.state import TrainState


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def num_parameters(model) -> int:
    return int(sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param))))


def checkpoint_origin(source: str, checkpoint: str) -> dict:
    """The origin record of parameters read from the file ``checkpoint`` of ``source``."""
    return {
        "source": source,
        "checkpoint": os.path.abspath(checkpoint),
        "checkpoint_bytes": os.path.getsize(checkpoint),
        "sha256": sha256_of(checkpoint),
    }


def write_workdir(
    workdir: str,
    model,
    config,
    *,
    num_bins: int,
    origin: dict,
    origin_file: str = wd.CONVERTED,
    train: str,
    num_train: int = 0,
):
    """Writes the run of ``model`` with the full ``config`` into the new directory
        ``workdir``, ``origin`` (where the parameters came from, e.g. ``checkpoint_origin``) as
        ``origin_file``, ``train`` and ``num_train`` the name and size of the split the parameters
    were trained on (``data_info.json``); returns the
        origin record as written. An existing non-empty ``workdir`` is refused; a failed write
        removes what it created."""
    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise CheckpointError(f"--workdir {workdir} exists and is not empty; give a new one")
    created = not os.path.exists(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        lock = wd.RunLock(workdir)
    except OSError as e:
        raise CheckpointError(f"cannot write to --workdir {workdir} ({e.strerror})") from None
    try:
        state = TrainState.create(
            model, run_optimizer(config), jax.random.key(config.train.seed), ema=False
        )
        ckpt = Checkpointer(wd.path(workdir, wd.CHECKPOINTS))
        try:
            meta = {"best_val_bpd": math.inf, "best_step": None, "wall_time_s": 0.0}
            ckpt.save(0, state, meta)
        finally:
            ckpt.close()
        wd.write_text_atomic(wd.path(workdir, wd.METRICS), "")
        record = {
            **origin,
            "model": config.model.to_dict(),
            "num_parameters": num_parameters(model),
            "provenance": provenance(),
        }
        wd.write_json(wd.path(workdir, origin_file), record)
        wd.write_run_files(  # last: a workdir with a config.json is a complete run
            workdir,
            config,
            image_shape=model.image_shape,
            num_bins=int(num_bins),
            num_classes=int(model.num_classes or 0),
            train=train,
            num_train=int(num_train),
        )
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    lock.release()
    return record
