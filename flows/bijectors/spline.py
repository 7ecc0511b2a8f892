r"""Monotone rational-quadratic splines (Durkan, Bekasov, Murray & Papamakarios 2019).

On ``[-B, B]`` the map is a monotone spline through ``K + 1`` knots
``(x_k, y_k)``, ``x_0 = y_0 = -B``, ``x_K = y_K = B``, with positive derivatives ``d_k`` at
the knots; outside ``[-B, B]`` it is the identity (linear tails), and ``d_0 = d_K = 1`` make
the derivative continuous there. The ``K = num_segments`` intervals between knots are the
paper's "bins" (named segments here: ``num_bins`` is the data's quantisation everywhere else).
In segment ``k`` (``x_k <= x < x_{k+1}``), with
``w_k = x_{k+1} - x_k``, ``h_k = y_{k+1} - y_k``, ``s_k = h_k / w_k`` and
``xi = (x - x_k) / w_k`` in [0, 1]:

    with c_k = d_{k+1} + d_k - 2 s_k and D(xi) = s_k + c_k xi (1 - xi),
    Forward:  y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / D(xi)
              dy/dx = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2] / D(xi)^2,
              log|det| = sum log dy/dx.
    Inverse:  with dy = y - y_k, xi solves a xi^2 + b xi + c = 0,
              a = h_k (s_k - d_k) + dy c_k,  b = h_k d_k - dy c_k,  c = -s_k dy,
              xi = 2c / (-b - sqrt(b^2 - 4ac))  (the numerically stable root).

Each dimension has ``3K - 1`` unconstrained parameters: ``K`` bin widths and ``K`` bin
heights (softmax, each at least ``min_bin_width`` / ``min_bin_height`` of the range) and
``K - 1`` interior derivatives (``min_derivative + softplus``). All-zero parameters give
equal bins and unit derivatives: the identity, so zero-initialised layers start there.

* ``RationalQuadraticSpline``: elementwise, with learned knots per feature (last axis,
  shared over image positions) or per element of a full event shape; with
  ``context_features`` the knots are shifted by a zero-initialised linear map of the context,
  so a 1-D density ``p(x | y)`` has knots of its own for every label.
* ``SplineCoupling`` / ``spline_coupling``: a coupling whose ``x2`` goes through a spline with
  knots computed by a conditioner ``NN(x1, context)`` (an MLP for vectors, Glow's conv net
  for images).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from flows.bijectors.base import Bijector, Coupling, sum_except_batch
from flows.nn.conditioners import ContextProjection, ConvConditioner
from flows.nn.mlp import MLPConditioner

DEFAULT_MIN_BIN_WIDTH = 1e-3
DEFAULT_MIN_BIN_HEIGHT = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def num_spline_params(num_segments: int) -> int:
    """Unconstrained parameters per dimension: K widths, K heights, K - 1 derivatives."""
    return 3 * num_segments - 1


def spline_knots(
    params,
    *,
    bound: float,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
):
    """Knot positions ``(xs, ys)`` (``K + 1`` each) and derivatives ``ds`` (``K + 1``, the two
    ends equal to 1) from unconstrained ``params`` of shape ``(..., 3K - 1)``."""
    k = (params.shape[-1] + 1) // 3
    if min_bin_width * k >= 1 or min_bin_height * k >= 1:
        raise ValueError(f"min_bin_width/min_bin_height too large for {k} bins")

    def cumulative(raw, minimum):
        frac = minimum + (1 - minimum * k) * jax.nn.softmax(raw, axis=-1)
        cum = jnp.cumsum(frac, axis=-1)
        zero = jnp.zeros(cum.shape[:-1] + (1,), cum.dtype)
        cum = jnp.concatenate([zero, cum[..., :-1], jnp.ones_like(zero)], axis=-1)
        return bound * (2 * cum - 1)

    xs = cumulative(params[..., :k], min_bin_width)
    ys = cumulative(params[..., k : 2 * k], min_bin_height)
    # softplus(0 + shift) = 1 - min_derivative, so zero parameters give unit derivatives.
    shift = math.log(math.expm1(1 - min_derivative))
    inner = min_derivative + jax.nn.softplus(params[..., 2 * k :] + shift)
    one = jnp.ones(inner.shape[:-1] + (1,), inner.dtype)
    ds = jnp.concatenate([one, inner, one], axis=-1)
    return xs, ys, ds


def _gather(a, onehot):
    """``a[..., idx]`` with the bin index given as a one-hot mask (cheaper than a gather for a
    handful of bins, on every backend, and simpler to differentiate)."""
    return jnp.sum(jnp.where(onehot, a, 0), axis=-1)


def rational_quadratic_spline(
    x,
    params,
    *,
    bound: float,
    inverse: bool = False,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
):
    """The spline (or its inverse) applied elementwise: ``(y, log|dy/dx|)``, both ``x.shape``.

    ``params`` has shape ``(..., 3K - 1)`` broadcastable against ``x.shape + (3K - 1,)``.
    """
    # Knots are computed at the parameters' own shape (once per feature for an elementwise
    # layer) and broadcast against x only when a bin is selected.
    xs, ys, ds = spline_knots(
        params.astype(x.dtype),
        bound=bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )
    inside = (x >= -bound) & (x <= bound)
    v = jnp.clip(x, -bound, bound)
    knots = ys if inverse else xs
    idx = jnp.sum(v[..., None] >= knots[..., 1:-1], axis=-1, keepdims=True)
    lo = idx == jnp.arange(knots.shape[-1] - 1)  # bin k: knots k and k + 1
    x_lo, x_hi = _gather(xs[..., :-1], lo), _gather(xs[..., 1:], lo)
    y_lo, y_hi = _gather(ys[..., :-1], lo), _gather(ys[..., 1:], lo)
    d_lo, d_hi = _gather(ds[..., :-1], lo), _gather(ds[..., 1:], lo)
    w, h = x_hi - x_lo, y_hi - y_lo
    s = h / w
    c = d_hi + d_lo - 2 * s
    if inverse:
        dy = v - y_lo
        a = h * (s - d_lo) + dy * c
        b = h * d_lo - dy * c
        cc = -s * dy
        disc = jnp.maximum(b * b - 4 * a * cc, 0.0)
        xi = jnp.clip(2 * cc / (-b - jnp.sqrt(disc)), 0.0, 1.0)
        out = x_lo + xi * w
    else:
        xi = (v - x_lo) / w
    t = xi * (1 - xi)
    denom = s + c * t
    if not inverse:
        out = y_lo + h * (s * xi * xi + d_lo * t) / denom
    numer = d_hi * xi * xi + 2 * s * t + d_lo * (1 - xi) ** 2
    log_deriv = 2 * jnp.log(s) + jnp.log(numer) - 2 * jnp.log(denom)
    if inverse:
        log_deriv = -log_deriv
    out = jnp.where(inside, out, x)
    log_deriv = jnp.where(inside, log_deriv, jnp.zeros_like(log_deriv))
    return out, log_deriv


class _SplineMixin:
    def _spline(self, x, params, inverse):
        y, ld = rational_quadratic_spline(
            x,
            params,
            bound=self.bound,
            inverse=inverse,
            min_bin_width=self.min_bin_width,
            min_bin_height=self.min_bin_height,
            min_derivative=self.min_derivative,
        )
        return y, sum_except_batch(ld)


class RationalQuadraticSpline(_SplineMixin, Bijector):
    """Elementwise monotone RQ spline on ``[-bound, bound]``, identity outside.

    ``features``: an int (knots per feature of the last axis, shared over image positions)
    or an event shape tuple (knots per element). ``context_features``: the knots also get a
    zero-initialised linear map of the context.
    """

    def __init__(
        self,
        features: int | tuple[int, ...],
        num_segments: int = 8,
        bound: float = 3.0,
        *,
        context_features: int | None = None,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
        rngs: nnx.Rngs | None = None,
    ):
        shape = (features,) if isinstance(features, int) else tuple(features)
        self.param_shape = shape + (num_spline_params(num_segments),)
        self.params = nnx.Param(jnp.zeros(self.param_shape))
        self.num_segments = num_segments
        self.bound = float(bound)
        self.min_bin_width = min_bin_width
        self.min_bin_height = min_bin_height
        self.min_derivative = min_derivative
        if context_features and rngs is None:
            raise ValueError("a context-conditioned spline needs rngs")
        size = math.prod(self.param_shape)
        self.context_proj = (
            ContextProjection(context_features, size, zero_init=True, rngs=rngs)
            if context_features
            else None
        )

    def _params(self, x, context):
        p = self.params[...]
        if self.context_proj is None:
            return p
        if context is None:
            raise ValueError("this spline is conditional: pass context=(batch, features)")
        h = self.context_proj(context, 2)
        # (batch, *param_shape), broadcast over the positions between batch and the knots.
        extra = x.ndim - len(self.param_shape)  # axes of x not covered by param_shape[:-1]
        h = h.reshape(h.shape[:1] + (1,) * extra + self.param_shape)
        return p + h

    def forward_and_log_det(self, x, *, context=None):
        return self._spline(x, self._params(x, context), inverse=False)

    def inverse_and_log_det(self, z, *, context=None):
        return self._spline(z, self._params(z, context), inverse=True)


class SplineCoupling(_SplineMixin, Coupling):
    """Coupling ``y2 = spline(x2; knots = NN(x1, context))`` on the last axis; ``y1 = x1``.

    The conditioner outputs ``(..., (C - split) * (3K - 1))``; log|det| = sum log dy2/dx2.
    """

    def __init__(
        self,
        conditioner: nnx.Module,
        split: int,
        num_segments: int = 8,
        bound: float = 3.0,
        *,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        super().__init__(conditioner, split)
        self.num_segments = num_segments
        self.params_per_dim = num_spline_params(num_segments)
        self.bound = float(bound)
        self.min_bin_width = min_bin_width
        self.min_bin_height = min_bin_height
        self.min_derivative = min_derivative

    def _knot_params(self, h):
        return h.reshape(h.shape[:-1] + (-1, self.params_per_dim))

    def _transform(self, x2, h):
        return self._spline(x2, self._knot_params(h), inverse=False)

    def _inverse_transform(self, y2, h):
        return self._spline(y2, self._knot_params(h), inverse=True)


def spline_coupling(
    features: int,
    hidden: int,
    *,
    num_segments: int = 8,
    bound: float = 3.0,
    network: str = "mlp",
    num_hidden_layers: int = 2,
    context_features: int | None = None,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    activation=jax.nn.relu,
    compute_dtype: str = "float32",
    remat: bool = False,
    conv_impl: str = "auto",
    rngs: nnx.Rngs,
) -> SplineCoupling:
    """A spline coupling on the last axis; ``network``: 'mlp' (vectors) or 'conv' (images,
    Glow's 3x3-1x1-3x3 net). The conditioner's last layer is zero: it starts as the identity.

    ``compute_dtype``, ``remat`` and ``conv_impl`` are the conv network's
    (``ConvConditioner``: matrix products in bf16, hidden activations recomputed in the
    backward pass, 'gemm' or 'lax' convolutions); the knots and
    the spline itself are computed in the input's dtype."""
    if features < 2:
        raise ValueError(f"a coupling needs at least 2 features, got {features}")
    split = features // 2
    out = (features - split) * num_spline_params(num_segments)
    if network == "mlp":
        if compute_dtype != "float32" or remat or conv_impl != "auto":
            raise ValueError("compute_dtype, remat and conv_impl are options of the 'conv' network")
        net = MLPConditioner(
            split,
            out,
            hidden,
            num_hidden_layers,
            context_features=context_features,
            activation=activation,
            rngs=rngs,
        )
    elif network == "conv":
        net = ConvConditioner(
            split,
            out,
            hidden,
            context_features=context_features,
            compute_dtype=compute_dtype,
            remat=remat,
            conv_impl=conv_impl,
            rngs=rngs,
        )
    else:
        raise ValueError(f"unknown conditioner network {network!r}; use 'mlp' or 'conv'")
    return SplineCoupling(
        net,
        split,
        num_segments,
        bound,
        min_bin_width=min_bin_width,
        min_bin_height=min_bin_height,
        min_derivative=min_derivative,
    )
