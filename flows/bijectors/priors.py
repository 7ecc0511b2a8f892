"""Learned Gaussian priors written as bijectors onto a standard normal.

A learned prior ``z ~ N(mu, diag(sigma^2))`` is the same as the bijector
``eps = (z - mu) / sigma`` followed by a standard normal on ``eps``; written that way it is
tested like every other layer, and the model's density is always
``log p(x) = sum log N(eps; 0, I) + total log-det``.

* ``GaussianSplit`` (Glow's multi-scale split, "learned prior at every split"): channels are
  split as ``[x1, x2]`` with ``x1 = x[..., :C//2]``; ``x2`` is factored out with the
  conditional prior ``N(mu(x1, y), exp(log_sigma(x1, y))^2)`` computed by a zero-initialised
  3x3 conv of ``x1`` (plus a zero-initialised projection of the context y).
  Forward: ``[x1, x2] -> [x1, (x2 - mu) * exp(-log_sigma)]``; log|det| = -sum log_sigma.
* ``LearnedPrior`` (Glow's top prior, ``learntop`` / ``ycond``): per-channel mu and log_sigma,
  plus a zero-initialised linear map of the context (a one-hot label) to both.
  Forward: ``eps = (z - mu(y)) * exp(-log_sigma(y))``; log|det| = -sum log_sigma.

Sampling at temperature T draws ``eps ~ N(0, T^2 I)`` and inverts, which is Glow's
``z = mu + T * sigma * eps``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from flows.bijectors.base import Bijector, sum_except_batch
from flows.nn.conditioners import ContextProjection, ZeroConvConditioner


def _standardise(x, mean, log_sigma):
    eps = (x - mean) * jnp.exp(-log_sigma)
    return eps, -sum_except_batch(jnp.broadcast_to(log_sigma, x.shape))


def _unstandardise(eps, mean, log_sigma):
    x = eps * jnp.exp(log_sigma) + mean
    return x, sum_except_batch(jnp.broadcast_to(log_sigma, x.shape))


class GaussianSplit(Bijector):
    """``conv_impl``: the conditioner's convolution, see ``ZeroConvConditioner``."""

    def __init__(
        self,
        channels: int,
        *,
        context_features: int | None = None,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        self.split = channels // 2
        factored = channels - self.split
        self.conditioner = ZeroConvConditioner(
            self.split,
            2 * factored,
            context_features=context_features,
            conv_impl=conv_impl,
            rngs=rngs,
        )

    def _params(self, x1, context):
        h = self.conditioner(x1, context)
        return h[..., 0::2], h[..., 1::2]

    def forward_and_log_det(self, x, *, context=None):
        x1, x2 = x[..., : self.split], x[..., self.split :]
        eps, ld = _standardise(x2, *self._params(x1, context))
        return jnp.concatenate([x1, eps], axis=-1), ld

    def inverse_and_log_det(self, z, *, context=None):
        z1, eps = z[..., : self.split], z[..., self.split :]
        x2, ld = _unstandardise(eps, *self._params(z1, context))
        return jnp.concatenate([z1, x2], axis=-1), ld


class LearnedPrior(Bijector):
    def __init__(self, channels: int, *, context_features: int | None = None, rngs: nnx.Rngs):
        self.mean = nnx.Param(jnp.zeros((channels,)))
        self.log_sigma = nnx.Param(jnp.zeros((channels,)))
        self.context_proj = (
            ContextProjection(context_features, 2 * channels, zero_init=True, rngs=rngs)
            if context_features
            else None
        )

    def _params(self, x, context):
        mean, log_sigma = self.mean[...], self.log_sigma[...]
        if self.context_proj is not None:
            if context is None:
                raise ValueError("this prior is conditional: pass context=(batch, features)")
            h = self.context_proj(context, x.ndim)
            mean, log_sigma = mean + h[..., 0::2], log_sigma + h[..., 1::2]
        return mean, log_sigma

    def forward_and_log_det(self, x, *, context=None):
        return _standardise(x, *self._params(x, context))

    def inverse_and_log_det(self, z, *, context=None):
        return _unstandardise(z, *self._params(z, context))
