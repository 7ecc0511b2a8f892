"""Fixed channel permutations (RealNVP / Glow ablations).

Forward: ``y[..., i] = x[..., perm[i]]``; inverse uses the inverse permutation.
A permutation is volume preserving: log|det| = 0.

* ``Reverse``: perm = (C-1, ..., 0).
* ``Shuffle``: a random permutation drawn once at construction from ``rngs.params()``
  (so it is seeded like every other parameter) and kept fixed as a ``Buffer``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flows.bijectors.base import Bijector, Buffer


class Permute(Bijector):
    """Permutes the last axis by a fixed index array."""

    def __init__(self, permutation: jax.Array):
        permutation = jnp.asarray(permutation, jnp.int32)
        self.permutation = Buffer(permutation)
        self.inverse_permutation = Buffer(jnp.argsort(permutation).astype(jnp.int32))

    def forward_and_log_det(self, x, *, context=None):
        return jnp.take(x, self.permutation[...], axis=-1), jnp.zeros(x.shape[:1], x.dtype)

    def inverse_and_log_det(self, z, *, context=None):
        return jnp.take(z, self.inverse_permutation[...], axis=-1), jnp.zeros(z.shape[:1], z.dtype)


class Reverse(Permute):
    def __init__(self, channels: int):
        super().__init__(jnp.arange(channels - 1, -1, -1))


class Shuffle(Permute):
    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        super().__init__(jax.random.permutation(rngs.params(), channels))
