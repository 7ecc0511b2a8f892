"""Conditioner networks: they compute the parameters of coupling and prior layers.

Conditioners need not be invertible. Their last layer is zero-initialised (Glow), so every
coupling starts as the identity and every learned prior as a standard normal.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from flows.nn.backend import COMPUTE_DTYPES, check_compute_dtype, resolve_conv_impl
from flows.nn.conv import conv2d, linear

__all__ = ["COMPUTE_DTYPES", "check_compute_dtype"]  # re-exported: their old home

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


def relu_to(x, dtype, impl="gemm"):
    """``relu(x)``, stored in ``dtype`` when one is given: with ``impl='gemm'`` by
    ``_relu_cast`` (a custom VJP that keeps no mask), with ``'lax'`` by plain autodiff
    (forward-mode differentiable)."""
    if dtype is None:
        return jax.nn.relu(x)
    return _relu_cast(x, dtype) if impl == "gemm" else jax.nn.relu(x).astype(dtype)


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

    ``conv_impl``: ``'gemm'``, ``'lax'`` or ``'auto'`` (``flows.nn.backend.resolve_conv_impl``:
    gemm on CPU, lax on GPU/TPU). The products run at the backend's default precision: the
    network need not be exact, the coupling stays exactly triangular whatever it computes.
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
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        self.compute_dtype = check_compute_dtype(compute_dtype)
        self.conv_impl = resolve_conv_impl(conv_impl)[0]
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
        net = functools.partial(_conv_net, compute_dtype=cd, impl=self.conv_impl)
        if self.remat:
            net = jax.checkpoint(net)
        return net(x, *weights)


def _conv_net(x, w1, b1, w2, b2, w3, b3, compute_dtype, impl):
    h = conv2d(x, w1, compute_dtype, impl=impl) + b1
    # With a compute dtype the hidden activations are stored in it (the cast fuses into
    # the ReLU): the next product reads them as they are, and autodiff keeps half.
    h = relu_to(h, compute_dtype, impl)
    h = relu_to(linear(h, w2, compute_dtype, impl=impl) + b2, compute_dtype, impl)
    return conv2d(h, w3, compute_dtype, impl=impl) + b3


class ZeroConvConditioner(nnx.Module):
    """A single zero-initialised 3x3 conv (Glow's ``Conv2dZeros`` for split priors), plus an
    optional zero-initialised projection of the context. ``conv_impl``: see
    ``ConvConditioner``."""

    def __init__(
        self,
        in_channels,
        out_channels,
        *,
        context_features=None,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        self.conv_impl = resolve_conv_impl(conv_impl)[0]
        self.w = nnx.Param(jnp.zeros((3, 3, in_channels, out_channels)))
        self.b = nnx.Param(jnp.zeros((out_channels,)))
        self.context_proj = (
            ContextProjection(context_features, out_channels, zero_init=True, rngs=rngs)
            if context_features
            else None
        )

    def __call__(self, x, context=None):
        require_context(context, self.context_proj)
        h = conv2d(x, self.w[...], impl=self.conv_impl) + self.b[...]
        if self.context_proj is not None:
            h = h + self.context_proj(context, h.ndim)
        return h
