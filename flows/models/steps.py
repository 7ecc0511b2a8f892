"""Glow's step of flow, and a stack of K identical steps run with ``lax.scan``.

A step is ``ActNorm -> permutation -> coupling`` (Glow, Sec. 3). The K steps of a level are
created once with ``nnx.vmap`` (parameters stacked on a leading axis of size K) and applied
with ``lax.scan``, so the compiled program, and the compile time, do not grow with K.
``remat=True`` recomputes each step's activations in the backward pass (``jax.checkpoint``),
so training memory does not grow with K either.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from flows.bijectors import ActNorm, Bijector, Chain, Conv1x1, Conv1x1LU, Reverse, Shuffle
from flows.bijectors.coupling import conv_coupling

PERMUTATIONS = ("conv1x1_lu", "conv1x1", "shuffle", "reverse")


def make_permutation(kind: str, channels: int, *, rngs: nnx.Rngs) -> Bijector:
    if kind == "conv1x1_lu":
        return Conv1x1LU(channels, rngs=rngs)
    if kind == "conv1x1":
        return Conv1x1(channels, rngs=rngs)
    if kind == "shuffle":
        return Shuffle(channels, rngs=rngs)
    if kind == "reverse":
        return Reverse(channels)
    raise ValueError(f"unknown permutation {kind!r}; choose one of {list(PERMUTATIONS)}")


def glow_step(
    channels: int,
    hidden_channels: int,
    *,
    coupling: str = "affine",
    permutation: str = "conv1x1_lu",
    context_features: int | None = None,
    rngs: nnx.Rngs,
) -> Chain:
    """One step of flow: ActNorm -> permutation -> coupling."""
    return Chain(
        [
            ActNorm(channels),
            make_permutation(permutation, channels, rngs=rngs),
            conv_coupling(
                coupling, channels, hidden_channels, context_features=context_features, rngs=rngs
            ),
        ]
    )


class StepStack(Bijector):
    """K copies of a step, parameters stacked on axis 0, applied in order with ``lax.scan``.

    Forward applies step 0 first; the inverse runs the scan in reverse.
    """

    def __init__(
        self,
        make_step: Callable[[nnx.Rngs], Bijector],
        num_steps: int,
        *,
        rngs: nnx.Rngs,
        remat: bool = False,
    ):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")

        @nnx.split_rngs(splits=num_steps)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs):
            return make_step(rngs)

        self.steps = create(rngs)
        self.num_steps = num_steps
        self.remat = remat

    def _scan(self, apply, x, context, reverse):
        graphdef, state = nnx.split(self.steps)

        def body(carry, step_state):
            h, log_det = carry
            y, ld = apply(nnx.merge(graphdef, step_state), h, context)
            return (y, log_det + ld), None

        if self.remat:
            body = jax.checkpoint(body)
        init = (x, jnp.zeros(x.shape[:1], x.dtype))
        (y, log_det), _ = jax.lax.scan(body, init, state, reverse=reverse)
        return y, log_det

    def forward_and_log_det(self, x, *, context=None):
        return self._scan(lambda s, h, c: s.forward_and_log_det(h, context=c), x, context, False)

    def inverse_and_log_det(self, z, *, context=None):
        return self._scan(lambda s, h, c: s.inverse_and_log_det(h, context=c), z, context, True)

    def initialize(self, x, *, context=None):
        graphdef, state = nnx.split(self.steps)

        def body(h, step_state):
            step = nnx.merge(graphdef, step_state)
            y = step.initialize(h, context=context)
            return y, nnx.state(step)

        y, new_state = jax.lax.scan(body, x, state)
        nnx.update(self.steps, new_state)
        return y
