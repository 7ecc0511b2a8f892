"""The numeric fields of a training config's non-model sections (``config.data``, ``optim``,
``train``, ``eval``), checked in one table when the config enters the trainer, before the
workdir is touched: a bad value is a one-line ``ConfigError`` naming ``section.field`` and
the value.

``config.model``'s fields are checked by the model families (``flows.models.registry``).
A field the config lacks is not checked here (the code that reads it reports it); limits
that depend on the data (``data.n_bits``, ``data.validation_size``, a batch larger than the
dataset) are checked where the data is read (``flows.data``).
"""

from __future__ import annotations

import math

from flows.errors import ConfigError


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(least: int, *, optional: bool = False):
    """An integer ``>= least`` (None too when ``optional``)."""

    def check(value) -> bool:
        if value is None:
            return optional
        return _integer(value) and value >= least

    return check, f"an integer >= {least}" + (" or None" if optional else "")


def number(least: float, *, strict: bool = False, below: float | None = None):
    """A finite number ``>= least`` (``> least`` when ``strict``), ``< below`` if given."""

    def check(value) -> bool:
        if not _number(value) or not math.isfinite(value):
            return False
        above = value > least if strict else value >= least
        return above and (below is None or value < below)

    low = f"> {least:g}" if strict else f">= {least:g}"
    text = f"a finite number {low}" if below is None else f"a number in [{least:g}, {below:g})"
    return check, text


def _pad_to(value) -> bool:
    if value is None:
        return True
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(_integer(v) and v >= 1 for v in value)
    )


SEED = integer(0)
EVERY = integer(0)  # 0: only after the last step (flows.train.periodic)

# section.field -> (check, what it must be).
FIELDS = {
    "data.n_bits": integer(1, optional=True),
    "data.pad_to": (_pad_to, "None or (height, width), two positive integers"),
    "data.validation_size": integer(0),
    "data.split_seed": SEED,
    "optim.lr": number(0, strict=True),
    "optim.warmup_steps": integer(0),
    "optim.b1": number(0, below=1),
    "optim.b2": number(0, below=1),
    "optim.eps": number(0),
    "optim.weight_decay": number(0),
    "optim.grad_clip_norm": number(0),
    "optim.max_consecutive_nonfinite": integer(1),
    "train.seed": SEED,
    "train.batch_size": integer(1),
    "train.init_batch_size": integer(1),
    "train.num_train_steps": integer(1),
    "train.ema_decay": number(0, below=1),
    "train.log_every": EVERY,
    "train.eval_every": EVERY,
    "train.checkpoint_every": EVERY,
    "train.sample_every": EVERY,
    "train.num_grid_samples": integer(1),
    "train.sample_temperature": number(0),
    "train.distributed.num_processes": integer(0),
    "train.distributed.process_id": integer(-1),
    "eval.batch_size": integer(1),
    "eval.num_samples": integer(1),
    "eval.seed": SEED,
}

_ABSENT = object()


def _get(config, dotted: str):
    node = config
    for key in dotted.split("."):
        try:
            node = node[key]
        except (KeyError, TypeError, AttributeError):
            return _ABSENT
    return node


def check_config(config) -> None:
    """A one-line ``ConfigError`` for the first field of ``FIELDS`` that ``config`` has with
    a value outside its range: ``train.batch_size must be an integer >= 1, got 0``."""
    for dotted, (check, text) in FIELDS.items():
        value = _get(config, dotted)
        if value is not _ABSENT and not check(value):
            raise ConfigError(f"{dotted} must be {text}, got {value!r}")
