"""Space-to-depth reorderings (log|det| = 0).

* ``Squeeze`` (RealNVP, Glow): (B, H, W, C) -> (B, H/2, W/2, 4C); each 2x2 spatial block
  becomes 4 channels, ordered (c, i, j) with i, j the offsets in the block.
* ``Patchify(image_shape, patch_size)`` (ViT; Jet, TarFlow): (B, H, W, C) -> (B, T, d) tokens,
  ``T = (H/p)(W/p)`` patches in row-major order, each flattened to ``d = p * p * C`` features
  ordered (row in patch, column in patch, channel).
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


class Patchify(Bijector):
    """(B, H, W, C) -> (B, T, p*p*C) tokens; see the module docstring."""

    def __init__(self, image_shape, patch_size: int):
        h, w, c = (int(d) for d in image_shape)
        p = int(patch_size)
        if p < 1 or h % p or w % p:
            raise ValueError(f"patch size {p} does not divide the image size {h}x{w}")
        self.image_shape = (h, w, c)
        self.patch_size = p
        self.grid = (h // p, w // p)

    def forward_and_log_det(self, x, *, context=None):
        b = x.shape[0]
        (nh, nw), p, c = self.grid, self.patch_size, self.image_shape[2]
        t = x.reshape(b, nh, p, nw, p, c).transpose(0, 1, 3, 2, 4, 5)
        return t.reshape(b, nh * nw, p * p * c), jnp.zeros((b,), x.dtype)

    def inverse_and_log_det(self, z, *, context=None):
        b = z.shape[0]
        (nh, nw), p, c = self.grid, self.patch_size, self.image_shape[2]
        x = z.reshape(b, nh, nw, p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, *self.image_shape), jnp.zeros((b,), z.dtype)
