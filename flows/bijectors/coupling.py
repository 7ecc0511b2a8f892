"""Coupling layers (NICE / RealNVP / Glow) on the last axis (channels of images, features of
vectors). The input is split as ``x = [x1, x2]`` with ``x1 = x[..., :d]``, ``d = C // 2``;
``x1`` passes unchanged and conditions a transform of ``x2`` through ``h = NN(x1, context)``.

* Additive:  ``y2 = x2 + h``;                                    log|det| = 0.
* Affine:    ``shift, raw = h[..., 0::2], h[..., 1::2]``, ``scale = sigmoid(raw + 2)``,
             ``y2 = (x2 + shift) * scale``;                      log|det| = sum log scale.
  The sigmoid bounds the scale in (0, 1), so the inverse ``x2 = y2 / scale - shift`` never
  divides by zero and starts near the identity (sigmoid(2) ~ 0.88).

The conditioner is any module ``NN(x1, context) -> (..., k * (C - d))``; zero-initialising
its last layer makes the coupling start as (almost) the identity. The split and the
conditioner call are ``flows.bijectors.base.Coupling``'s, which the spline coupling shares.

``conv_coupling`` builds any of Glow's couplings on image channels (``CONV_COUPLINGS``):
these two and the rational-quadratic spline coupling of ``spline.py``
(``y2 = spline(x2; knots = NN(x1, context))``, exactly the identity at initialisation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flows.bijectors.base import Coupling, sum_except_batch
from flows.bijectors.spline import spline_coupling
from flows.errors import ConfigError
from flows.nn.conditioners import ConvConditioner


class AdditiveCoupling(Coupling):
    params_per_dim = 1

    def _transform(self, x2, h):
        return x2 + h, jnp.zeros(x2.shape[:1], x2.dtype)

    def _inverse_transform(self, y2, h):
        return y2 - h, jnp.zeros(y2.shape[:1], y2.dtype)


class AffineCoupling(Coupling):
    params_per_dim = 2

    @staticmethod
    def _shift_and_logit(h):
        """``shift`` and ``a = raw + 2``, the logit of the scale: ``scale = sigmoid(a)``."""
        return h[..., 0::2], h[..., 1::2] + 2.0

    def _transform(self, x2, h):
        shift, a = self._shift_and_logit(h)
        return (x2 + shift) * jax.nn.sigmoid(a), -sum_except_batch(_softplus(-a))

    def _inverse_transform(self, y2, h):
        # 1 / sigmoid(a) = 1 + exp(-a): one exponential, no division.
        shift, a = self._shift_and_logit(h)
        return y2 * (1.0 + jnp.exp(-a)) - shift, sum_except_batch(_softplus(-a))


def _softplus(z):
    """``log(1 + exp(z))`` computed stably as ``max(z, 0) + log1p(exp(-|z|))``; so
    ``log sigmoid(a) = -softplus(-a)``. Written out (no NaN/inf special cases, unlike
    ``jax.nn.softplus``) so XLA:CPU keeps the coupling's elementwise work one tight loop."""
    return jnp.maximum(z, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(z)))


COUPLINGS = {"additive": AdditiveCoupling, "affine": AffineCoupling}
# The couplings ``conv_coupling`` builds (Glow's ``model.coupling``).
CONV_COUPLINGS = ("additive", "affine", "spline")


def check_coupling(kind: str) -> str:
    """``kind`` if it is one of ``CONV_COUPLINGS``; else a one-line ``ConfigError``."""
    if kind not in CONV_COUPLINGS:
        raise ConfigError(f"unknown coupling {kind!r}; choose one of {list(CONV_COUPLINGS)}")
    return kind


def conv_coupling(
    kind: str,
    channels: int,
    hidden_channels: int,
    *,
    context_features: int | None = None,
    compute_dtype: str = "float32",
    remat: bool = False,
    conv_impl: str = "auto",
    rngs: nnx.Rngs,
    **spline_kwargs,
) -> Coupling:
    """A coupling on image channels with Glow's convolutional conditioner (``compute_dtype``,
    ``remat`` and ``conv_impl``: see ``ConvConditioner``).

    ``kind``: 'additive', 'affine' or 'spline' (``flows.bijectors.spline.SplineCoupling``;
    ``spline_kwargs`` such as ``num_segments``, ``bound`` go to ``spline_coupling``)."""
    check_coupling(kind)
    if channels < 2:
        raise ValueError(f"a coupling needs at least 2 channels, got {channels}")
    if kind == "spline":
        return spline_coupling(
            channels,
            hidden_channels,
            network="conv",
            context_features=context_features,
            compute_dtype=compute_dtype,
            remat=remat,
            conv_impl=conv_impl,
            rngs=rngs,
            **spline_kwargs,
        )
    if spline_kwargs:
        raise ValueError(f"{kind} coupling takes no spline options {sorted(spline_kwargs)}")
    cls = COUPLINGS[kind]
    split = channels // 2
    net = ConvConditioner(
        split,
        cls.params_per_dim * (channels - split),
        hidden_channels,
        context_features=context_features,
        compute_dtype=compute_dtype,
        remat=remat,
        conv_impl=conv_impl,
        rngs=rngs,
    )
    return cls(net, split)
