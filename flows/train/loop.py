"""The training loop: ``train_and_evaluate(config, workdir)``.

What a workdir holds after a run::

    config.json             the resolved config
    metrics.jsonl           one record per log step (train bits/dim, val bits/dim, speed, ...)
    checkpoints/<step>/     the latest TrainState (orbax); a rerun of the same command resumes
    best/<step>/            the state with the best validation bits/dim (model selection)
    samples/step_<n>.png    sample grids during training; samples.png at the end
    learning_curves.png     train / validation bits/dim against step
    eval_test.json          test bits/dim of the selected parameters, with provenance

The test split never picks anything: with a validation split, the best-on-validation state
is evaluated on test; without one, the final state is.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from flows import data as data_lib
from flows import plotting
from flows.evaluation import evaluate, evaluate_bits_per_dim
from flows.metrics import dequantize, quantize
from flows.models.build import build_model
from flows.train import sharding
from flows.train.checkpoint import Checkpointer, abstract_like
from flows.train.objectives import density_loss, is_conditional
from flows.train.optim import make_optimizer
from flows.train.state import TrainState
from flows.train.step import make_train_step


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps); the message is one line."""


def _batch(data, step, batch_size, seed):
    idx = data_lib.batch_indices(data.num_examples, batch_size, seed, step)
    idx = idx[sharding.process_slice(batch_size)]
    return {"image": data.images[idx], "label": data.labels[idx].astype(np.int32)}


def _write_jsonl(path, records, mode="a"):
    with open(path, mode) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def read_metrics(workdir) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate_metrics(workdir, last_step):
    """On resume, drop records written after the checkpoint we resume from."""
    kept = [r for r in read_metrics(workdir) if r["step"] <= last_step]
    _write_jsonl(os.path.join(workdir, "metrics.jsonl"), kept, mode="w")


def make_model_and_state(
    config,
    image_shape,
    num_levels,
    num_classes,
    tx,
    init_images,
    init_labels,
    mesh,
    label_counts=None,
):
    """Builds the model, runs data-dependent init on ``init_images`` (a sharded global batch),
    and returns ``(graphdef, TrainState)`` replicated over the mesh."""
    seed = config.train.seed
    model = build_model(config.model, image_shape, num_classes, rngs=nnx.Rngs(seed))
    if label_counts is not None and is_conditional(model):
        model.set_label_prior(label_counts)  # p(y) for the marginal and Bayes' rule
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def initialize(params, buffers, images, labels, key):
        m = nnx.merge(graphdef, params, buffers)
        x = dequantize(key, images, num_levels)
        m.initialize(x, context=labels if is_conditional(m) else None)
        return nnx.split(m, nnx.Param, ...)[1:]

    key = jax.random.key(seed)
    params, buffers = initialize(
        sharding.replicate(params, mesh),
        sharding.replicate(buffers, mesh),
        init_images,
        init_labels,
        jax.random.fold_in(key, -1 % 2**31),
    )
    model = nnx.merge(graphdef, params, buffers)
    state = TrainState.create(model, tx, key, ema=config.train.ema_decay > 0)
    return graphdef, sharding.replicate(state, mesh)


def _sample_grid(path, model, key, num, temperature, num_levels, num_classes):
    context = None
    if is_conditional(model):
        context = jnp.arange(num) % num_classes
    x = model.sample(num, key, temperature=temperature, context=context)
    plotting.save_image_grid(path, np.asarray(quantize(x, num_levels)), num_levels)


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (resuming if ``workdir`` has a checkpoint), then evaluates on test.

    Returns the test evaluation record.
    """
    t_start = time.time()
    sharding.initialize_distributed(config.train.distributed)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    datasets = data_lib.load_datasets(config.data)
    train, val, test = datasets["train"], datasets["validation"], datasets["test"]
    image_shape, num_levels, num_classes = train.image_shape, train.num_levels, train.num_classes
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))
        with open(os.path.join(workdir, "data_info.json"), "w") as f:
            info = {
                "image_shape": list(image_shape),
                "num_levels": num_levels,
                "num_classes": num_classes,
                "train": train.name,
                "num_train": train.num_examples,
            }
            json.dump(info, f, indent=2)

    tc = config.train
    mesh = sharding.data_mesh()
    sharding.check_batch_size(tc.batch_size, mesh)
    tx = make_optimizer(config.optim, tc.num_steps)
    init_batch = _batch(train, 0, tc.init_batch_size, tc.seed + 1)
    init_sharded = sharding.shard_batch(init_batch, mesh)
    graphdef, state = make_model_and_state(
        config,
        image_shape,
        num_levels,
        num_classes,
        tx,
        init_sharded["image"],
        init_sharded["label"],
        mesh,
        label_counts=np.bincount(train.labels, minlength=num_classes),
    )
    num_params = sum(x.size for x in jax.tree.leaves(state.params))

    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=2)
    best_ckpt = Checkpointer(os.path.join(workdir, "best"), max_to_keep=1)
    meta = {"best_val_bpd": math.inf, "best_step": None, "wall_time_s": 0.0}
    last_val = None
    start_step = 0
    if checkpoints.latest_step() is not None:
        state, meta = checkpoints.restore(abstract_like(state, sharding.replicated(mesh)))
        start_step = int(state.step)
        _truncate_metrics(workdir, start_step)
        print(f"resumed from {checkpoints.directory}/{start_step}")
    elif is_main:
        _write_jsonl(os.path.join(workdir, "metrics.jsonl"), [], mode="w")

    loss_fn = density_loss(num_levels, config.model.weight_y)
    state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), state)
    train_step = jax.jit(
        make_train_step(graphdef, loss_fn, tx, tc.ema_decay),
        in_shardings=(state_sharding, sharding.batch_sharded(mesh)),
        out_shardings=(state_sharding, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    use_ema = bool(config.eval.use_ema) and state.ema is not None
    eval_key = jax.random.key(config.eval.seed)
    samples_dir = os.path.join(workdir, "samples")
    os.makedirs(samples_dir, exist_ok=True)

    def validate(state):
        model = state.model(graphdef, use_ema=use_ema)
        rec = evaluate_bits_per_dim(model, val, batch_size=config.eval.batch_size, key=eval_key)
        return rec["bits_per_dim"]

    pending, t_log, session_start, skipped_reported = [], time.time(), time.time(), 0
    wall_before = meta["wall_time_s"]
    bar = tqdm(
        total=tc.num_steps,
        initial=start_step,
        desc="train",
        unit="step",
        disable=not (is_main and tc.progress),
        mininterval=1.0,
    )
    for step in range(start_step, tc.num_steps):
        batch = sharding.shard_batch(_batch(train, step, tc.batch_size, tc.seed), mesh)
        state, metrics = train_step(state, batch)
        pending.append(metrics)
        bar.update(1)
        done = step + 1
        is_last = done == tc.num_steps
        if done % tc.log_every == 0 or is_last:
            stats = jax.device_get(pending)
            now = time.time()
            record = {
                "step": done,
                "train_bpd": float(np.mean([m["bpd"] for m in stats])),
                "grad_norm": float(np.mean([m["grad_norm"] for m in stats])),
                "nonfinite_steps": int(stats[-1]["nonfinite_steps"]),
                "consecutive_nonfinite": int(stats[-1]["consecutive_nonfinite"]),
                "images_per_s": len(stats) * tc.batch_size / max(now - t_log, 1e-9),
                "wall_time_s": wall_before + now - session_start,
            }
            pending, t_log = [], now
            if record["nonfinite_steps"] > skipped_reported:
                skipped_reported = record["nonfinite_steps"]
                bar.write(f"step {done}: {skipped_reported} non-finite steps skipped so far")
            if val is not None and (done % tc.eval_every == 0 or is_last):
                record["val_bpd"] = validate(state)
                if record["val_bpd"] < meta["best_val_bpd"]:
                    meta.update(best_val_bpd=record["val_bpd"], best_step=done)
                    best_ckpt.save(done, state, dict(meta, wall_time_s=record["wall_time_s"]))
            # The bar shows the latest validation (validation runs every eval_every steps).
            last_val = record.get("val_bpd", last_val)
            postfix = {"bpd": f"{record['train_bpd']:.3f}"}
            if last_val is not None:
                postfix["val"] = f"{last_val:.3f}"
            bar.set_postfix(postfix)
            if is_main:
                _write_jsonl(os.path.join(workdir, "metrics.jsonl"), [record])
            if record["consecutive_nonfinite"] >= config.optim.max_consecutive_nonfinite:
                raise TrainingError(
                    f"step {done}: {record['consecutive_nonfinite']} non-finite steps in a row; "
                    f"lower optim.lr or check the data (last checkpoint kept in {workdir})"
                )
        if tc.sample_every and (done % tc.sample_every == 0) and is_main:
            model = state.model(graphdef, use_ema=use_ema)
            _sample_grid(
                os.path.join(samples_dir, f"step_{done:06d}.png"),
                model,
                jax.random.fold_in(eval_key, done),
                tc.num_grid_samples,
                tc.sample_temperature,
                num_levels,
                num_classes,
            )
        if done % tc.checkpoint_every == 0 or is_last:
            meta["wall_time_s"] = wall_before + time.time() - session_start
            checkpoints.save(done, state, meta)
    bar.close()
    checkpoints.wait()
    best_ckpt.wait()

    # Model selection on validation, then one evaluation on test.
    selected, selected_step = state, int(state.step)
    if val is not None and best_ckpt.latest_step() is not None:
        selected, _ = best_ckpt.restore(abstract_like(state, sharding.replicated(mesh)))
        selected_step = int(selected.step)
    model = selected.model(graphdef, use_ema=use_ema)
    record = evaluate(
        model,
        test,
        batch_size=config.eval.batch_size,
        key=jax.random.fold_in(eval_key, 1),
        num_samples=config.eval.num_samples,
    )
    record.update(
        dataset=config.data.name,
        n_bits=config.data.n_bits,
        parameters="ema" if use_ema else "raw",
        checkpoint_step=selected_step,
        selected_by="best validation bits/dim" if val is not None else "final step",
        num_params=int(num_params),
        train_steps=int(state.step),
        wall_time_s=float(meta["wall_time_s"]),
        total_time_s=time.time() - t_start,
    )
    if is_main:
        with open(os.path.join(workdir, "eval_test.json"), "w") as f:
            json.dump(record, f, indent=2)
        _sample_grid(
            os.path.join(workdir, "samples.png"),
            model,
            jax.random.fold_in(eval_key, 2),
            tc.num_grid_samples,
            tc.sample_temperature,
            num_levels,
            num_classes,
        )
        plotting.plot_learning_curves(
            os.path.join(workdir, "learning_curves.png"),
            {os.path.basename(os.path.normpath(workdir)): read_metrics(workdir)},
            title=f"{config.data.name}: bits/dim",
        )
    checkpoints.close()
    best_ckpt.close()
    return record
