"""Periodic actions of the step loop, each on its own schedule (as clu's periodic actions).

An action runs after step ``s`` (1-based count of steps done) when ``every > 0`` and
``s % every == 0``, and after the last step when ``on_last``. Each action may add fields to
the step's record; the loop writes a record to ``metrics.jsonl`` whenever one was added.

* ``LogTrainMetrics`` (``train.log_every``): mean train bits/dim and loss, gradient norm,
  learning rate, skipped steps and speed since the last log; stops the run after too many
  non-finite steps.
* ``Validate`` (``train.eval_every``): validation bits/dim; keeps the best state in ``best/``.
* ``SampleGrid`` (``train.sample_every``): a sample grid PNG in ``samples/`` (and in
  TensorBoard, ``flows.train.tensorboard``).
* ``SaveCheckpoint`` (``train.checkpoint_every``): the whole TrainState and the loop's meta.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from flows import plotting
from flows import workdir as wd
from flows.errors import TrainingError
from flows.evaluation import evaluate_bits_per_dim
from flows.likelihood import quantize
from flows.models import is_conditional, sample_compiled
from flows.train.optim import learning_rate_of_step
from flows.train.setup import DATA_STATE, Run
from flows.train.tensorboard import PERIODIC_SAMPLES, Board


class PeriodicAction:
    on_last = True

    def __init__(self, every: int):
        self.every = int(every)

    def due(self, step: int, is_last: bool) -> bool:
        return (self.every > 0 and step % self.every == 0) or (is_last and self.on_last)

    def observe(self, metrics) -> None:
        """Called after every step with its (device) metrics."""

    def __call__(self, run: Run, step: int, record: dict) -> None:
        raise NotImplementedError


def mean_of_applied(grad_norms) -> float:
    """The mean of the finite gradient norms (the steps whose update was applied: a skipped
    step's gradients are NaN); NaN when every step was skipped."""
    finite = [g for g in grad_norms if np.isfinite(g)]
    return float(np.mean(finite)) if finite else math.nan


class LogTrainMetrics(PeriodicAction):
    """Over the steps since the last log: the means ``train_bpd`` and ``train_loss`` (bits/dim
    plus the model's auxiliary loss), ``grad_norm`` (``mean_of_applied``: the steps that
    updated the parameters), every metric the model's ``log_prob_and_aux_loss`` adds, as
    ``train_<name>``; at the last step: ``lr`` (``optim.learning_rate_of_step``: the rate
    that step's update was made with), ``nonfinite_steps`` (skipped so far),
    ``consecutive_nonfinite``; ``images_per_s`` and ``wall_time_s``."""

    LOOP_METRICS = frozenset(
        {"bpd", "loss", "grad_norm", "nonfinite_steps", "consecutive_nonfinite"}
    )

    def __init__(self, every: int, wall_time, schedule):
        super().__init__(every)
        self.pending, self.t_last = [], time.time()
        self.wall_time = wall_time  # () -> seconds of training so far, over every session
        self.schedule = schedule  # the optimizer's learning-rate schedule (optim.py)
        self.skipped_reported = 0

    def observe(self, metrics) -> None:
        self.pending.append(metrics)

    def __call__(self, run: Run, step: int, record: dict) -> None:
        stats, now = jax.device_get(self.pending), time.time()
        last = stats[-1]
        record.update(
            train_bpd=float(np.mean([m["bpd"] for m in stats])),
            train_loss=float(np.mean([m["loss"] for m in stats])),
            grad_norm=mean_of_applied([m["grad_norm"] for m in stats]),
            lr=learning_rate_of_step(
                self.schedule,
                step,
                int(last["nonfinite_steps"]),
                skipped_this_step=int(last["consecutive_nonfinite"]) > 0,
            ),
            nonfinite_steps=int(last["nonfinite_steps"]),
            consecutive_nonfinite=int(last["consecutive_nonfinite"]),
            images_per_s=len(stats) * run.config.train.batch_size / max(now - self.t_last, 1e-9),
            wall_time_s=self.wall_time(),
        )
        for name in last.keys() - self.LOOP_METRICS:  # the model's own (e.g. aux_ce_bits)
            record[f"train_{name}"] = float(np.mean([m[name] for m in stats]))
        self.pending, self.t_last = [], now
        if record["nonfinite_steps"] > self.skipped_reported:
            self.skipped_reported = record["nonfinite_steps"]
            if run.is_main:
                tqdm.write(f"step {step}: {self.skipped_reported} non-finite steps skipped so far")
        if record["consecutive_nonfinite"] >= run.config.optim.max_consecutive_nonfinite:
            raise TrainingError(
                f"step {step}: {record['consecutive_nonfinite']} non-finite steps in a row; "
                f"lower optim.lr or check the data (checkpoints saved so far stay in "
                f"{run.workdir})"
            )


class Validate(PeriodicAction):
    def __init__(self, every: int, wall_time):
        super().__init__(every)
        self.wall_time = wall_time

    def __call__(self, run: Run, step: int, record: dict) -> None:
        if run.validation_split is None:
            return
        rec = evaluate_bits_per_dim(
            run.model(),
            run.validation_split,
            batch_size=run.config.eval.batch_size,
            key=run.eval_key,
        )
        record["val_bpd"] = rec["bits_per_dim"]
        if record["val_bpd"] < run.meta["best_val_bpd"]:
            run.meta.update(best_val_bpd=record["val_bpd"], best_step=step)
            run.best.save(step, run.state, dict(run.meta, wall_time_s=self.wall_time()))


def save_sample_grid(path, run: Run, model, key, title: str) -> np.ndarray:
    """Samples at ``train.sample_temperature`` as a labelled PNG grid (``flows.plotting``)
    under ``title``; returns the picture (uint8).

    A conditional model's grid has one row per class, ``ceil(train.num_grid_samples /
    num_classes)`` samples of that class each, the class at the row's left; an unconditional
    model's is a square-ish grid of ``train.num_grid_samples``. The header gives the
    temperature."""
    tc = run.config.train
    n, context, row_labels, ncols = tc.num_grid_samples, None, None, None
    if is_conditional(model):
        ncols = math.ceil(n / model.num_classes)  # a row per class
        n = ncols * model.num_classes
        context = jnp.repeat(jnp.arange(model.num_classes), ncols)
        row_labels = [str(y) for y in range(model.num_classes)]
    x = sample_compiled(model, n, key, tc.sample_temperature, context)
    bins = run.train_split.num_bins
    levels = np.asarray(quantize(x, bins))
    rows = plotting.rows_of(levels, ncols)
    return plotting.save_grid(
        path,
        rows,
        bins,
        groups=[(f"T={tc.sample_temperature:g}", len(rows[0]))],
        row_labels=row_labels,
        corner="class" if row_labels else None,
        title=title,
    )


class SampleGrid(PeriodicAction):
    on_last = False  # the final grid is drawn from the selected parameters (loop.finish)

    def __init__(self, every: int, board: Board | None):
        super().__init__(every)
        self.board = board

    def __call__(self, run: Run, step: int, record: dict) -> None:
        if run.is_main:
            path = wd.path(run.workdir, f"{wd.SAMPLES}/step_{step:06d}.png")
            key = jax.random.fold_in(run.eval_key, step)
            picture = save_sample_grid(path, run, run.model(), key, f"samples at step {step}")
            if self.board is not None:
                self.board.samples(PERIODIC_SAMPLES, step, picture)


class SaveCheckpoint(PeriodicAction):
    def __init__(self, every: int, wall_time):
        super().__init__(every)
        self.wall_time = wall_time

    def __call__(self, run: Run, step: int, record: dict) -> None:
        run.meta["wall_time_s"] = self.wall_time()
        run.meta[DATA_STATE] = run.batches.get_state()  # the next batch to read
        # The best state this meta names must be on disk before a checkpoint refers to it
        # (saves are asynchronous): a resume then never finds best/ behind its meta.
        run.best.wait()
        run.checkpoints.save(step, run.state, run.meta)
