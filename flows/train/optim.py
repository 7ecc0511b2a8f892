"""Optimizers from config: Adam or Adamax (Glow's released code), linear warmup, optional
cosine decay, global-norm gradient clipping, and skipping of non-finite updates.

``config`` fields (``config.optim``): ``name`` ('adam' | 'adamax'), ``lr``, ``warmup_steps``,
``schedule`` ('constant' | 'cosine'), ``b1``, ``b2``, ``eps``, ``grad_clip_norm``
(0 disables), ``max_consecutive_nonfinite`` (that many skipped steps in a row abort the run).
"""

from __future__ import annotations

import optax

from flows.errors import ConfigError

OPTIMIZERS = {"adam": optax.adam, "adamax": optax.adamax}


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
    warmup = max(int(config.warmup_steps), 0)
    if config.schedule == "constant":
        after = optax.constant_schedule(config.lr)
    elif config.schedule == "cosine":
        after = optax.cosine_decay_schedule(config.lr, max(total_steps - warmup, 1), alpha=0.01)
    else:
        raise ConfigError(f"unknown optim.schedule {config.schedule!r}; use 'constant' or 'cosine'")
    if warmup == 0:
        return after
    return optax.join_schedules(
        [optax.linear_schedule(config.lr / max(warmup, 1), config.lr, warmup), after], [warmup]
    )


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
    """The optax transformation for ``config.optim``; non-finite gradients skip the update."""
    if config.name not in OPTIMIZERS:
        raise ConfigError(f"unknown optim.name {config.name!r}; choose one of {sorted(OPTIMIZERS)}")
    schedule = learning_rate_schedule(config, total_steps)
    parts = []
    if config.grad_clip_norm and config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(OPTIMIZERS[config.name](schedule, b1=config.b1, b2=config.b2, eps=config.eps))
    tx = optax.chain(*parts)
    # optax would apply updates again after max_consecutive_errors skips; the loop aborts
    # first (at optim.max_consecutive_nonfinite), so never train on a non-finite update.
    return optax.apply_if_finite(tx, max_consecutive_errors=2**30)
