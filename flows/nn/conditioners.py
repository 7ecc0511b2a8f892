"""Conditioner networks: they compute the parameters of coupling and prior layers.

Conditioners need not be invertible. Their last layer is zero-initialised (Glow), so every
coupling starts as the identity and every learned prior as a standard normal.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from flows.errors import ConfigError
from flows.nn.conv import conv2d_same, dense

hidden_kernel_init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class ContextProjection(nnx.Module):
    """A linear map of the context features to ``features``, broadcast over positions.

    ``zero_init`` starts it at zero (Glow's ``y -> prior`` layer).
    """

    def __init__(self, context_features: int, features: int, *, zero_init: bool, rngs):
        init = nnx.initializers.zeros_init() if zero_init else hidden_kernel_init
        self.linear = nnx.Linear(context_features, features, kernel_init=init, rngs=rngs)

    def __call__(self, context: jax.Array, ndim: int) -> jax.Array:
        h = self.linear(context)
        return h.reshape(h.shape[:1] + (1,) * (ndim - 2) + h.shape[1:])


def relu_to(x, dtype):
    """``relu(x)``, stored in ``dtype`` when one is given (see ``_relu_cast``)."""
    return jax.nn.relu(x) if dtype is None else _relu_cast(x, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _relu_cast(x, dtype):
    """``relu(x).astype(dtype)`` whose VJP reads the mask ``y > 0`` off the output y.

    Autodiff's relu keeps its own mask, so a scanned Glow level would stack a boolean copy
    of every hidden activation next to the activation itself (kept for the next product's
    weight gradient anyway); this keeps only y."""
    return jax.nn.relu(x).astype(dtype)


def _relu_cast_fwd(x, dtype):
    y = _relu_cast(x, dtype)
    # A zero-size array carries x's dtype to the backward pass (residuals must be arrays).
    return y, (y, jnp.zeros((0,), x.dtype))


def _relu_cast_bwd(dtype, res, g):
    y, x_dtype_tag = res
    return (jnp.where(y > 0, g, jnp.zeros_like(g)).astype(x_dtype_tag.dtype),)


_relu_cast.defvjp(_relu_cast_fwd, _relu_cast_bwd)


COMPUTE_DTYPES = ("float32", "bfloat16")


def check_compute_dtype(compute_dtype: str) -> str:
    """The canonical name of a coupling network's product dtype ('float32' or 'bfloat16')."""
    name = jnp.dtype(compute_dtype).name if compute_dtype is not None else "float32"
    if name not in COMPUTE_DTYPES:
        raise ConfigError(f"compute_dtype {compute_dtype!r}: use one of {list(COMPUTE_DTYPES)}")
    return name


def require_context(context, projection):
    if projection is not None and context is None:
        raise ValueError("this layer is conditional: pass context=(batch, context_features)")


class ConvConditioner(nnx.Module):
    """3x3 conv -> ReLU -> 1x1 conv -> ReLU -> zero-initialised 3x3 conv (Glow's NN()).

    With ``context_features``, a learned projection of the context is added to the first
    hidden features (a class embedding when the context is a one-hot label).

    ``compute_dtype`` (``'float32'``, or ``'bfloat16'`` for mixed precision) rounds the
    operands of the three matrix products to that dtype, accumulating in float32, and keeps
    the two hidden activations in it: mixed precision inside the network only. The coupling
    that uses its output, its log-det and the priors stay in full precision, so the density
    is still exact for the map the model computes.

    ``remat=True`` recomputes the two hidden activations in the backward pass
    (``jax.checkpoint``) instead of keeping them: training then keeps only the network's
    input. Gradients are unchanged. At 32x32, K=8, batch 64 XLA's temporary buffers drop
    207 -> 48 MB with bfloat16 products, for one more pass through the first two products;
    whether that is also faster depends on the CPU (see README, "Speed").
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        *,
        context_features: int | None = None,
        compute_dtype: str = "float32",
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        self.compute_dtype = check_compute_dtype(compute_dtype)
        self.remat = bool(remat)
        h = hidden_channels
        self.w1 = nnx.Param(hidden_kernel_init(rngs.params(), (3, 3, in_channels, h)))
        self.b1 = nnx.Param(jnp.zeros((h,)))
        self.w2 = nnx.Param(hidden_kernel_init(rngs.params(), (h, h)))
        self.b2 = nnx.Param(jnp.zeros((h,)))
        self.w3 = nnx.Param(jnp.zeros((3, 3, h, out_channels)))
        self.b3 = nnx.Param(jnp.zeros((out_channels,)))
        self.context_proj = (
            ContextProjection(context_features, h, zero_init=False, rngs=rngs)
            if context_features
            else None
        )

    def __call__(self, x, context=None):
        require_context(context, self.context_proj)
        cd = None if self.compute_dtype == "float32" else jnp.dtype(self.compute_dtype)
        bias1 = self.b1[...]
        if self.context_proj is not None:
            bias1 = bias1 + self.context_proj(context, x.ndim)
        weights = (self.w1[...], bias1, self.w2[...], self.b2[...], self.w3[...], self.b3[...])
        net = functools.partial(_conv_net, compute_dtype=cd)
        if self.remat:
            net = jax.checkpoint(net)
        return net(x, *weights)


def _conv_net(x, w1, b1, w2, b2, w3, b3, compute_dtype):
    h = conv2d_same(x, w1, compute_dtype) + b1
    # With a compute dtype the hidden activations are stored in it (the cast fuses into
    # the ReLU): the next product reads them as they are, and autodiff keeps half.
    h = relu_to(h, compute_dtype)
    h = relu_to(dense(h, w2, compute_dtype) + b2, compute_dtype)
    return conv2d_same(h, w3, compute_dtype) + b3


class ZeroConvConditioner(nnx.Module):
    """A single zero-initialised 3x3 conv (Glow's ``Conv2dZeros`` for split priors), plus an
    optional zero-initialised projection of the context."""

    def __init__(self, in_channels, out_channels, *, context_features=None, rngs: nnx.Rngs):
        self.w = nnx.Param(jnp.zeros((3, 3, in_channels, out_channels)))
        self.b = nnx.Param(jnp.zeros((out_channels,)))
        self.context_proj = (
            ContextProjection(context_features, out_channels, zero_init=True, rngs=rngs)
            if context_features
            else None
        )

    def __call__(self, x, context=None):
        require_context(context, self.context_proj)
        h = conv2d_same(x, self.w[...]) + self.b[...]
        if self.context_proj is not None:
            h = h + self.context_proj(context, h.ndim)
        return h
