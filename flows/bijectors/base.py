"""The invertible-layer interface, the combinators ``Chain`` and ``Invert``, and ``Coupling``,
the base of the couplings (``coupling.py``'s additive and affine, ``spline.py``'s spline).

A bijector maps data to latent (``forward``) and back (``inverse``) and reports the
log-absolute-determinant of the Jacobian of the map it applies, one value per example
(shape ``x.shape[:1]``). Every method takes a keyword ``context`` (conditioning features
of shape ``(batch, context_features)``) that a layer may ignore. Bijectors hold no
randomness: noise is always passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

# The precision of the products that mix the dimensions of a flow's own map (a 1x1
# convolution's W, Jet's split projections): ``HIGHEST`` on every backend, so the map computed
# is the one whose log-det is counted (a backend's fast default, TF32 on recent NVIDIA GPUs or
# bf16 passes on TPU, would round it). XLA:CPU computes float32 products exactly anyway.
EXACT = jax.lax.Precision.HIGHEST


class Buffer(nnx.Variable):
    """A fixed array that is part of a layer's state but not trained (a permutation, a mask).

    Optimizers are built with ``wrt=nnx.Param``, so buffers are never updated by gradients.
    """


def sum_except_batch(x: Array) -> Array:
    """Sum over every axis but the first: per-example totals, shape ``x.shape[:1]``."""
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def num_positions(x: Array) -> int:
    """Number of positions a channel-wise layer is applied at: product of the axes between
    batch and channels (``H * W`` for images, 1 for vectors)."""
    n = 1
    for d in x.shape[1:-1]:
        n *= d
    return n


class Bijector(nnx.Module):
    """Base class. Subclasses implement the two fused ``*_and_log_det`` methods."""

    def forward_and_log_det(self, x: Array, *, context: Array | None = None):
        """Data -> latent: ``(z, log|det dz/dx|)``, the log-det of shape ``(batch,)``."""
        raise NotImplementedError

    def inverse_and_log_det(self, z: Array, *, context: Array | None = None):
        """Latent -> data. Returns ``(x, log|det dx/dz|)`` (minus the forward log-det at x)."""
        raise NotImplementedError

    def forward(self, x: Array, *, context: Array | None = None) -> Array:
        return self.forward_and_log_det(x, context=context)[0]

    def inverse(self, z: Array, *, context: Array | None = None) -> Array:
        return self.inverse_and_log_det(z, context=context)[0]

    def initialize(self, x: Array, *, context: Array | None = None) -> Array:
        """Data-dependent initialisation on a batch; returns ``forward(x)`` after it.

        Layers without data-dependent parameters just apply themselves.
        """
        return self.forward(x, context=context)


class Chain(Bijector):
    """Composition applied left to right: ``Chain([f1, f2]).forward(x) = f2(f1(x))``.

    log|det| of the composition is the sum of the parts' log-dets.
    """

    def __init__(self, bijectors: Sequence[Bijector]):
        self.bijectors = nnx.List(list(bijectors))

    def forward_and_log_det(self, x, *, context=None):
        log_det = jnp.zeros(x.shape[:1], x.dtype)
        for b in self.bijectors:
            x, ld = b.forward_and_log_det(x, context=context)
            log_det = log_det + ld
        return x, log_det

    def inverse_and_log_det(self, z, *, context=None):
        log_det = jnp.zeros(z.shape[:1], z.dtype)
        for b in reversed(self.bijectors):
            z, ld = b.inverse_and_log_det(z, context=context)
            log_det = log_det + ld
        return z, log_det

    def initialize(self, x, *, context=None):
        for b in self.bijectors:
            x = b.initialize(x, context=context)
        return x


class Invert(Bijector):
    """The inverse of a bijector: its forward is the wrapped layer's inverse and vice versa."""

    def __init__(self, bijector: Bijector):
        self.bijector = bijector

    def forward_and_log_det(self, x, *, context=None):
        return self.bijector.inverse_and_log_det(x, context=context)

    def inverse_and_log_det(self, z, *, context=None):
        return self.bijector.forward_and_log_det(z, context=context)


class Coupling(Bijector):
    """Base of the couplings: splits ``x = [x1, x2]`` at ``split`` on the last axis and
    transforms ``x2`` with ``_transform(x2, h)`` / ``_inverse_transform(y2, h)``,
    ``h = conditioner(x1, context)``; ``params_per_dim`` outputs of ``h`` per element of x2."""

    params_per_dim = 1

    def __init__(self, conditioner: nnx.Module, split: int):
        self.conditioner = conditioner
        self.split = split

    def _parts(self, x, context):
        x1, x2 = x[..., : self.split], x[..., self.split :]
        return x1, x2, self.conditioner(x1, context)

    def forward_and_log_det(self, x, *, context=None):
        x1, x2, h = self._parts(x, context)
        y2, ld = self._transform(x2, h)
        return jnp.concatenate([x1, y2], axis=-1), ld

    def inverse_and_log_det(self, z, *, context=None):
        z1, z2, h = self._parts(z, context)
        x2, ld = self._inverse_transform(z2, h)
        return jnp.concatenate([z1, x2], axis=-1), ld
