"""Jit-compiled, pure training and evaluation steps.

``loss_fn(model, batch, key) -> (loss, metrics)`` is all the trainer knows of a model.
A step whose loss or gradients are not finite leaves parameters, optimizer moments and EMA
unchanged and is counted (``nonfinite_steps``), never silently trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from flows.train.state import TrainState, num_nonfinite_steps

LossFn = Callable[[nnx.Module, dict, jax.Array], tuple[jax.Array, dict]]


def make_train_step(graphdef, loss_fn: LossFn, tx: optax.GradientTransformation, ema_decay=0.0):
    """A pure ``step(state, batch) -> (state, metrics)``; jit it (with shardings) yourself."""

    def step(state: TrainState, batch: dict):
        key = state.step_key()

        def loss_of(params):
            return loss_fn(nnx.merge(graphdef, params, state.buffers), batch, key)

        (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        # A non-finite loss poisons the gradients, so apply_if_finite skips the update.
        finite = jnp.isfinite(loss)
        grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.nan), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema is not None:
            applied = jnp.isfinite(optax.tree.norm(grads))
            ema = jax.tree.map(
                lambda e, p: jnp.where(applied, ema_decay * e + (1 - ema_decay) * p, e),
                ema,
                params,
            )
        metrics = dict(metrics)
        metrics.update(
            loss=loss,
            grad_norm=optax.tree.norm(grads),
            nonfinite_steps=num_nonfinite_steps(opt_state),
            consecutive_nonfinite=opt_state.notfinite_count,
        )
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema)
        return new_state, metrics

    return step
