"""Training toy flows on dequantized table samples, with the library's optax step.

The pieces are the image trainer's: ``flows.train.optim.make_optimizer``,
``flows.train.state.TrainState`` and ``flows.train.step.make_train_step``. The loss draws a
fresh batch from the table inside the step (cells from the exact joint, then uniform
dequantization, from the step's own key), so ``steps_per_call`` steps run in one
``jax.lax.scan`` per jitted call.

NLL convention (printed as such): ``-log2`` of the flow's density on the *cell-index* scale,
``(-log p_unit(x) + sum_d log n_d) / log 2`` per sample, summed over dimensions. A density
uniform within each cell scores exactly ``-log2 P(cell)``, so the exact table's score is its
entropy and any flow's expected score is at least that (the gap is a KL divergence).
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flows.errors import ConfigError
from flows.likelihood import mean_and_standard_error
from flows.toy.models import batched_log_prob
from flows.toy.tables import Table, cell_index_log_volume, dequantize_cells, sample_cells
from flows.train.optim import make_optimizer
from flows.train.state import TrainState
from flows.train.step import make_train_step

JOINT = "joint"
CONDITIONAL = "conditional"


def model_inputs_log_volume(table: Table, kind: str) -> float:
    """``sum_d log n_d`` over the axes a model of that kind covers."""
    return cell_index_log_volume(table.shape if kind == JOINT else table.shape[:-1])


def model_inputs(key, table: Table, num: int, kind: str, *, stratified: bool = False):
    """A dequantized batch: ``(x, context, log_volume)`` for the joint (``x`` in [0,1]^D, no
    context) or the conditional model (``x`` the non-label axes, context the one-hot label)."""
    if kind not in (JOINT, CONDITIONAL):
        raise ConfigError(f"unknown toy model kind {kind!r}; use {JOINT!r} or {CONDITIONAL!r}")
    kc, ku = jax.random.split(key)
    cells = sample_cells(kc, table, num, stratified=stratified)
    x = dequantize_cells(ku, cells, table.shape)
    log_volume = model_inputs_log_volume(table, kind)
    if kind == JOINT:
        return x, None, log_volume
    context = jax.nn.one_hot(cells[:, -1], table.shape[-1], dtype=jnp.float32)
    return x[:, :-1], context, log_volume


def make_loss_fn(table: Table, kind: str, batch_size: int, *, stratified: bool = True):
    """``loss_fn(model, batch, key) -> (nll_nats, {'nll_bits'})``; ``batch`` is unused (the
    samples come from ``key``; ``stratified`` cells, see ``tables.sample_cells``)."""

    def loss_fn(model, batch, key):
        x, context, log_volume = model_inputs(key, table, batch_size, kind, stratified=stratified)
        nll = -jnp.mean(model.log_prob(x, context))
        return nll, {"nll_bits": (nll + log_volume) / math.log(2)}

    return loss_fn


def fit(
    model,
    table: Table,
    kind: str,
    *,
    optim,
    num_train_steps: int,
    batch_size: int,
    steps_per_call: int = 100,
    seed: int = 0,
    stratified: bool = True,
    log=None,
):
    """Train a copy of ``model``'s parameters; returns ``(trained_model, history)``.

    ``num_train_steps`` is rounded up to whole calls of ``steps_per_call`` steps (one jitted
    ``lax.scan`` each). ``optim``: the ``config.optim`` fields of ``make_optimizer``.
    ``history``: one dict per call (step, mean nll_bits over its steps, seconds).
    """
    steps_per_call = max(1, min(steps_per_call, num_train_steps))
    num_calls = -(-num_train_steps // steps_per_call)
    tx = make_optimizer(optim, num_calls * steps_per_call)
    graphdef = nnx.split(model, nnx.Param, ...)[0]
    state = TrainState.create(model, tx, jax.random.key(seed), ema=False)
    state = jax.tree.map(jnp.copy, state)  # the jitted steps donate it; leave `model` intact
    loss_fn = make_loss_fn(table, kind, batch_size, stratified=stratified)
    step = make_train_step(graphdef, loss_fn, tx)

    def many(state, batch):
        return jax.lax.scan(lambda s, _: step(s, batch), state, None, length=steps_per_call)

    many = jax.jit(many, donate_argnums=0)
    history, start = [], time.perf_counter()
    max_bad = int(getattr(optim, "max_consecutive_nonfinite", 50))
    for _ in range(num_calls):
        state, metrics = many(state, {})
        bad = int(metrics["consecutive_nonfinite"][-1])
        rec = dict(
            step=int(state.step),
            nll_bits=float(np.mean(metrics["nll_bits"])),
            nonfinite_steps=int(metrics["nonfinite_steps"][-1]),
            seconds=time.perf_counter() - start,
        )
        history.append(rec)
        if log is not None:
            log(rec)
        if bad >= max_bad:
            raise FloatingPointError(f"{bad} non-finite steps in a row at step {rec['step']}")
    return state.model(graphdef), history


def evaluate_nll(model, table: Table, kind: str, *, num_samples: int, seed: int, log_prob=None):
    """``(mean, standard error)`` of the NLL in bits (cell-index scale, see module doc) on
    ``num_samples`` fresh dequantized samples of the table (cells drawn independently).
    ``log_prob``: a ``models.batched_log_prob(model)`` to reuse."""
    f = log_prob or batched_log_prob(model)
    sample = jax.jit(lambda key: model_inputs(key, table, num_samples, kind)[:2])
    x, context = sample(jax.random.key(seed))
    log_volume = model_inputs_log_volume(table, kind)
    bits = -f(np.asarray(x), None if context is None else np.asarray(context)) + log_volume
    return mean_and_standard_error(bits / math.log(2))
