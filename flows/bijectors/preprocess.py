"""Preprocessing as bijectors, so that its Jacobian is counted like every other layer's.

* ``Shift(offset)``: ``y = x + offset``; log|det| = 0 (Glow maps [0, 1) to [-0.5, 0.5)).
* ``Scale(factor)``: ``y = factor * x``; log|det| = D log|factor|, D the event size.
* ``Logit(alpha)`` (RealNVP): ``p = alpha + (1 - 2 alpha) x``, ``y = log p - log(1 - p)``;
  log|det| = sum [log(1 - 2 alpha) - log p - log(1 - p)]. Maps [0, 1) to the real line.
* ``Probit(eps)``: ``z = Phi^{-1}(x)``, the standard normal quantile; log|det| = -sum log N(z).
  With a standard normal base the density of x is uniform on the unit cube.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flows.bijectors.base import Bijector, sum_except_batch
from flows.errors import ConfigError


def _event_size(x):
    return math.prod(x.shape[1:])


class Shift(Bijector):
    def __init__(self, offset: float):
        self.offset = offset

    def forward_and_log_det(self, x, *, context=None):
        return x + self.offset, jnp.zeros(x.shape[:1], x.dtype)

    def inverse_and_log_det(self, z, *, context=None):
        return z - self.offset, jnp.zeros(z.shape[:1], z.dtype)


class Scale(Bijector):
    def __init__(self, factor: float):
        if factor == 0:
            raise ValueError("Scale factor must be non-zero")
        self.factor = factor

    def _log_det(self, x):
        return jnp.full(x.shape[:1], _event_size(x) * math.log(abs(self.factor)), x.dtype)

    def forward_and_log_det(self, x, *, context=None):
        return x * self.factor, self._log_det(x)

    def inverse_and_log_det(self, z, *, context=None):
        return z / self.factor, -self._log_det(z)


class Logit(Bijector):
    def __init__(self, alpha: float = 0.05):
        if not 0 <= alpha < 0.5:
            raise ConfigError(f"Logit alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward_and_log_det(self, x, *, context=None):
        a = self.alpha
        p = a + (1 - 2 * a) * x
        log_p, log_1mp = jnp.log(p), jnp.log1p(-p)
        ld = sum_except_batch(math.log(1 - 2 * a) - log_p - log_1mp)
        return log_p - log_1mp, ld

    def inverse_and_log_det(self, z, *, context=None):
        a = self.alpha
        x = (jax.nn.sigmoid(z) - a) / (1 - 2 * a)
        # log p + log(1-p) = log_sigmoid(z) + log_sigmoid(-z)
        ld = sum_except_batch(jax.nn.log_sigmoid(z) + jax.nn.log_sigmoid(-z) - math.log(1 - 2 * a))
        return x, ld


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@jax.custom_jvp
def _normal_quantile(x):
    return jax.scipy.special.ndtri(x)


@_normal_quantile.defjvp
def _normal_quantile_jvp(primals, tangents):
    # d Phi^{-1}(x) / dx = 1 / N(z): one exp instead of differentiating ndtri's polynomials.
    (x,), (t,) = primals, tangents
    z = _normal_quantile(x)
    return z, t * jnp.exp(0.5 * z * z + _HALF_LOG_2PI)


class Probit(Bijector):
    """The standard normal quantile, unit interval -> real line.

    Forward: ``z = Phi^{-1}(x)``; log|det| = sum [z^2 / 2 + log(2 pi) / 2] = -sum log N(z).
    Inverse: ``x = Phi(z)``. With a standard normal base the density of x is uniform on the
    unit cube. ``x`` is clipped to ``[eps, 1 - eps]`` so the faces of the cube stay finite.
    """

    def __init__(self, eps: float = 1e-7):
        self.eps = eps

    def forward_and_log_det(self, x, *, context=None):
        z = _normal_quantile(jnp.clip(x, self.eps, 1 - self.eps))
        return z, sum_except_batch(0.5 * z * z + _HALF_LOG_2PI)

    def inverse_and_log_det(self, z, *, context=None):
        x = jax.scipy.special.ndtr(z)
        return x, -sum_except_batch(0.5 * z * z + _HALF_LOG_2PI)
