"""ActNorm (Kingma & Dhariwal 2018): a per-channel affine map with data-dependent init.

Forward: ``y = (x + b) * exp(s)`` per channel (last axis), broadcast over all positions.
log|det dy/dx| = P * sum_c s_c, with P the number of positions (H * W for images).
Inverse: ``x = y * exp(-s) - b``.

``initialize(x)`` sets ``b = -mean(x)`` and ``s = -log(std(x) + eps)`` over every axis but
the channels, so the output on that batch has zero mean and unit variance per channel.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from flows.bijectors.base import Bijector, num_positions


class ActNorm(Bijector):
    def __init__(self, channels: int, *, eps: float = 1e-6):
        self.bias = nnx.Param(jnp.zeros((channels,)))
        self.log_scale = nnx.Param(jnp.zeros((channels,)))
        self.eps = eps

    def _log_det(self, x):
        ld = num_positions(x) * jnp.sum(self.log_scale[...])
        return jnp.broadcast_to(ld, x.shape[:1]).astype(x.dtype)

    def forward_and_log_det(self, x, *, context=None):
        y = (x + self.bias[...]) * jnp.exp(self.log_scale[...])
        return y, self._log_det(x)

    def inverse_and_log_det(self, z, *, context=None):
        x = z * jnp.exp(-self.log_scale[...]) - self.bias[...]
        return x, -self._log_det(z)

    def initialize(self, x, *, context=None):
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes)
        std = jnp.std(x, axis=axes)
        self.bias[...] = (-mean).astype(self.bias.dtype)
        self.log_scale[...] = (-jnp.log(std + self.eps)).astype(self.log_scale.dtype)
        return self.forward(x, context=context)
