r"""Dequantization: uniform, or variational (Flow++, Ho et al. 2019), as one interface.

Discrete images ``v`` (K levels per value, D values) become continuous ``x = (v + u) / K`` on
the unit cube with noise ``u`` in ``[0, 1)^D``. A density ``p`` of x bounds the discrete
likelihood for any noise distribution ``q(u | v)`` on the unit cube (Jensen):

    log P(v) >= E_{u ~ q(.|v)} [log p(x) - log q(u | v)] - D log K,

and with ``k`` draws ``u_1..u_k`` the importance-weighted bound
``log (1/k) sum_i p(x_i) / q(u_i | v) - D log K`` (tighter as k grows). So every bound is
``flows.likelihood.bits_per_dim(log p(x) - log q(u | v))``, and ``dequantize`` returns the pair
``(x, log q(u | v))``.

* ``UniformDequantizer``: ``q = U[0, 1)^D``, ``log q = 0``: the usual bound (Theis et al. 2016).
* ``VariationalDequantizer``: ``q`` is the pushforward of uniform noise ``e ~ U[0, 1)^D``
  through a learned bijection ``g_v`` of the unit cube, ``u = g_v(e)``; by the change of
  variables ``log q(u | v) = log U(e) - log|det dg_v/de| = -log|det dg_v/de|``. It is trained
  jointly with the model by maximising the bound, which pulls ``q`` towards the model's
  posterior over the noise (the bound is tight when ``q(u | v) = p(x) / P(v)`` up to ``K^D``).

``g_v`` (a ``Bijector`` from e to u; context: features of v) is

    Shift(-1/2) -> Squeeze -> n x [Reverse -> spline coupling] -> Unsqueeze -> Shift(+1/2),

each coupling a rational-quadratic spline (``flows.bijectors.spline``) on ``[-1/2, 1/2]``, a
monotone map of that interval onto itself, so ``g_v`` maps the cube onto itself. The knots of
half of the (squeezed) channels come from Glow's 3x3-1x1-3x3 conv net that sees the other
half and a feature map of ``v`` (a small conv net on ``v / (K - 1) - 1/2``, shared by the
couplings). The nets' last layers start at zero: equal bins and unit slopes, the identity, so
at initialisation ``q`` is exactly the uniform and the objective equals the uniform bound.

The squeeze puts 4C channels at each position so a coupling can split them even for
greyscale images; height and width must be even.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flows.bijectors.base import Bijector, Chain, Invert
from flows.bijectors.permutations import Reverse
from flows.bijectors.preprocess import Shift
from flows.bijectors.spline import SplineCoupling, num_spline_params
from flows.bijectors.squeeze import Squeeze
from flows.errors import ConfigError
from flows.likelihood import dequantize_with_noise
from flows.nn.backend import resolve_conv_impl
from flows.nn.conditioners import ConvConditioner, hidden_kernel_init
from flows.nn.conv import conv2d

DEQUANTIZATIONS = ("uniform", "variational")


class UniformDequantizer(nnx.Module):
    """``x = (v + u) / K`` with the noise as given; ``log q(u | v) = 0``."""

    kind = "uniform"

    def dequantize(self, images, noise, num_bins: int):
        """``(x, log q(u | v))`` per example for integer ``images`` and noise in [0, 1)."""
        return dequantize_with_noise(images, noise, num_bins), jnp.zeros(images.shape[:1])


class ImageFeatures(nnx.Module):
    """Features of the (squeezed) image for the dequantizer's couplings:
    3x3 conv -> ReLU -> 3x3 conv -> ReLU, ``features`` channels at each position
    (``conv_impl``: see ``flows.nn.backend.resolve_conv_impl``)."""

    def __init__(self, in_channels: int, features: int, *, conv_impl="auto", rngs: nnx.Rngs):
        self.conv_impl = resolve_conv_impl(conv_impl)[0]
        self.w1 = nnx.Param(hidden_kernel_init(rngs.params(), (3, 3, in_channels, features)))
        self.b1 = nnx.Param(jnp.zeros((features,)))
        self.w2 = nnx.Param(hidden_kernel_init(rngs.params(), (3, 3, features, features)))
        self.b2 = nnx.Param(jnp.zeros((features,)))

    def __call__(self, x):
        h = jax.nn.relu(conv2d(x, self.w1[...], impl=self.conv_impl) + self.b1[...])
        return jax.nn.relu(conv2d(h, self.w2[...], impl=self.conv_impl) + self.b2[...])


class FeatureMapConditioner(nnx.Module):
    """``NN([x1, context])``: a conditioner whose context is a feature map at x1's positions,
    concatenated to x1 on the channel axis."""

    def __init__(self, net: nnx.Module):
        self.net = net

    def __call__(self, x1, context=None):
        if context is None:
            raise ValueError("this conditioner needs a feature map as context")
        return self.net(jnp.concatenate([x1, context.astype(x1.dtype)], axis=-1))


class VariationalDequantizer(Bijector):
    """The bijection ``e -> u = g_v(e)`` of the unit cube (module docstring); the context of
    ``forward_and_log_det`` is the image scaled to ``[-1/2, 1/2]`` (``image_context``).
    ``conv_impl``: every conv net's convolution (``flows.nn.backend.resolve_conv_impl``)."""

    kind = "variational"

    def __init__(
        self,
        image_shape,
        *,
        hidden_channels: int = 32,
        num_steps: int = 4,
        num_segments: int = 8,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        h, w, c = image_shape
        if h % 2 or w % 2:
            raise ConfigError(
                f"variational dequantization needs even image height and width, got {h}x{w}"
                " (pad the images: config.data.pad_to)"
            )
        if num_steps < 1:
            raise ConfigError(f"model.dequantizer_steps must be at least 1, got {num_steps}")
        channels = 4 * c
        split = channels // 2
        self.features = ImageFeatures(channels, hidden_channels, conv_impl=conv_impl, rngs=rngs)
        layers = [Shift(-0.5), Squeeze()]
        for _ in range(num_steps):
            net = ConvConditioner(
                split + hidden_channels,
                (channels - split) * num_spline_params(num_segments),
                hidden_channels,
                conv_impl=conv_impl,
                rngs=rngs,
            )
            layers += [
                Reverse(channels),
                SplineCoupling(FeatureMapConditioner(net), split, num_segments, bound=0.5),
            ]
        layers += [Invert(Squeeze()), Shift(0.5)]
        self.flow = Chain(layers)

    def _features(self, context):
        return self.features(Squeeze().forward(context))

    def forward_and_log_det(self, x, *, context=None):
        return self.flow.forward_and_log_det(x, context=self._features(context))

    def inverse_and_log_det(self, z, *, context=None):
        return self.flow.inverse_and_log_det(z, context=self._features(context))

    def dequantize(self, images, noise, num_bins: int):
        """``(x, log q(u | v))``: ``u = g_v(noise)``, ``x = (v + u) / K``."""
        u, log_det = self.forward_and_log_det(
            noise, context=image_context(images, num_bins, noise.dtype)
        )
        return dequantize_with_noise(images, u, num_bins), -log_det


def image_context(images, num_bins: int, dtype=jnp.float32):
    """Integer levels ``0..K-1`` scaled to ``[-1/2, 1/2]``: what the dequantizer sees of v."""
    return images.astype(dtype) / max(num_bins - 1, 1) - 0.5


def make_dequantizer(kind: str, image_shape, *, rngs: nnx.Rngs, **sizes):
    """The dequantizer ``kind`` (one of ``DEQUANTIZATIONS``) for images of ``image_shape``."""
    if kind == "uniform":
        return UniformDequantizer()
    if kind == "variational":
        return VariationalDequantizer(image_shape, rngs=rngs, **sizes)
    raise ConfigError(f"unknown dequantization {kind!r}; choose one of {list(DEQUANTIZATIONS)}")
