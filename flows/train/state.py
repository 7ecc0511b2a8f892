"""The training state as one pytree: everything a checkpoint needs to resume exactly.

``params`` are the model's ``nnx.Param`` leaves; ``buffers`` its other state (fixed
permutations, LU pivots); ``ema`` an exponential moving average of the params (or None);
``rng`` the run's base key as raw ``uint32`` key data. The key of step ``s`` is
``fold_in(rng, s)`` and its batch is a pure function of ``s`` (``flows.data``), so the step
count is the whole data position and a resumed run replays exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from flows.errors import ConfigError


@struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    buffers: nnx.State
    opt_state: optax.OptState
    ema: nnx.State | None
    rng: jax.Array

    @classmethod
    def create(cls, model: nnx.Module, tx: optax.GradientTransformation, key, *, ema: bool):
        _, params, buffers = nnx.split(model, nnx.Param, ...)
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            buffers=buffers,
            opt_state=tx.init(params),
            ema=jax.tree.map(jnp.copy, params) if ema else None,
            rng=jax.random.key_data(key),
        )

    def model(self, graphdef: nnx.GraphDef, *, use_ema: bool = False) -> nnx.Module:
        """The model with this state's raw (or EMA) parameters."""
        if use_ema and self.ema is None:
            raise ConfigError("this run kept no EMA of the parameters (train.ema_decay = 0)")
        return nnx.merge(graphdef, self.ema if use_ema else self.params, self.buffers)

    def step_key(self) -> jax.Array:
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def keeps_ema(config) -> bool:
    """Whether a run of ``config`` keeps an EMA of its parameters (``train.ema_decay > 0``)."""
    return config.train.ema_decay > 0


def default_use_ema(config, state: TrainState) -> bool:
    """Whether a run's evaluations use the EMA parameters: ``config.eval.use_ema``, when
    ``state`` kept an EMA."""
    return bool(config.eval.use_ema) and state.ema is not None


def num_nonfinite_steps(opt_state) -> jax.Array:
    """Total updates skipped for non-finite loss or gradients (``optax.apply_if_finite``)."""
    return opt_state.total_notfinite
