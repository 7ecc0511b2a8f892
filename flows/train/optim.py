"""Optimizers from config: Adam, AdamW (Jet, TarFlow) or Adamax (Glow's released code), linear
warmup, optional cosine decay, global-norm gradient clipping, and skipping of non-finite
updates.

``config`` fields (``config.optim``): ``name`` ('adam' | 'adamw' | 'adamax'), ``lr``,
``warmup_steps``, ``schedule`` ('constant' | 'cosine'), ``b1``, ``b2``, ``eps``,
``weight_decay`` (AdamW's decoupled decay, multiplied by the learning rate; AdamW only),
``grad_clip_norm`` (0 disables), ``max_consecutive_nonfinite`` (that many skipped steps in a
row abort the run).
"""

from __future__ import annotations

import optax

from flows.errors import ConfigError

OPTIMIZERS = {"adam": optax.adam, "adamw": optax.adamw, "adamax": optax.adamax}
# Fields added to config.optim after runs were written, with the value that keeps what those
# runs computed: a stored config without one ran with this (flows.train.setup on resume).
ADDED_DEFAULTS = {"weight_decay": 0.0}


def learning_rate_schedule(config, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the number of updates applied so far, ``n``:
    ``lr * (1/w + (1 - 1/w) n / w)`` for ``n < w = warmup_steps`` (linear from ``lr / w`` to
    ``lr``), then ``lr`` (constant) or ``lr * (0.01 + 0.99 (1 + cos(pi t)) / 2)`` with
    ``t = min(n - w, T) / T``, ``T = max(total_steps - w, 1)`` (cosine). ``make_optimizer``
    trains with it; the loop logs it through ``learning_rate_of_step``."""
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


def learning_rate_of_step(
    schedule: optax.Schedule, step: int, skipped: int, skipped_this_step: bool
) -> float:
    """The learning rate step ``step`` (1-based) was made with: ``schedule(c)`` where ``c`` is
    the number of updates applied before it, ``c = step - 1 - (skipped - skipped_this_step)``
    (``skipped``: the non-finite steps up to and including ``step``). optax counts only
    applied updates (``apply_if_finite`` leaves the count of a skipped step unchanged), so
    every skipped step delays the schedule by one step; for a skipped step this is the rate
    its update would have had."""
    return float(schedule(step - 1 - (skipped - int(skipped_this_step))))


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
    """The optax transformation for ``config.optim``; non-finite gradients skip the update."""
    if config.name not in OPTIMIZERS:
        raise ConfigError(f"unknown optim.name {config.name!r}; choose one of {sorted(OPTIMIZERS)}")
    schedule = learning_rate_schedule(config, total_steps)
    parts = []
    if config.grad_clip_norm and config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    hyper = {"b1": config.b1, "b2": config.b2, "eps": config.eps}
    weight_decay = float(config.get("weight_decay", 0.0))
    if config.name == "adamw":
        hyper["weight_decay"] = weight_decay
    elif weight_decay:
        raise ConfigError(f"optim.weight_decay needs optim.name='adamw', not {config.name!r}")
    parts.append(OPTIMIZERS[config.name](schedule, **hyper))
    tx = optax.chain(*parts)
    # optax would apply updates again after max_consecutive_errors skips; the loop aborts
    # first (at optim.max_consecutive_nonfinite), so never train on a non-finite update.
    return optax.apply_if_finite(tx, max_consecutive_errors=2**30)


def run_optimizer(config) -> optax.GradientTransformation:
    """The optimizer of a run's ``config``: ``make_optimizer`` of ``config.optim`` with the
    schedule over ``config.train.num_train_steps`` steps. Setting a run up
    (``flows.train.setup``) and loading it back (``flows.train.restore``) both build it."""
    return make_optimizer(config.optim, config.train.num_train_steps)
