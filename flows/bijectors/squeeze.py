"""Squeeze (RealNVP): space-to-depth by a factor 2.

Forward: (B, H, W, C) -> (B, H/2, W/2, 4C); each 2x2 spatial block becomes 4 channels,
ordered (c, i, j) with i, j the offsets in the block. A pure reordering: log|det| = 0.
"""

from __future__ import annotations

import jax.numpy as jnp

from flows.bijectors.base import Bijector


class Squeeze(Bijector):
    def forward_and_log_det(self, x, *, context=None):
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs even height and width, got {h}x{w}")
        y = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
        return y.reshape(b, h // 2, w // 2, 4 * c), jnp.zeros((b,), x.dtype)

    def inverse_and_log_det(self, z, *, context=None):
        b, h, w, c4 = z.shape
        c = c4 // 4
        x = z.reshape(b, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
        return x.reshape(b, 2 * h, 2 * w, c), jnp.zeros((b,), z.dtype)
