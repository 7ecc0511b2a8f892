"""Glow (Kingma & Dhariwal 2018): a multi-scale flow of L levels with K steps each.

Level l: ``Squeeze -> K x [ActNorm -> permutation -> coupling] -> GaussianSplit`` (the last
level ends in a ``LearnedPrior`` instead of a split). Each split factors half of the channels
out; every factored-out part, and the top latent, is standardised by its learned (optionally
label-conditional) Gaussian prior, so the whole model is one bijection onto independent
standard normals and

    log p(x | y) = sum_i log N(eps_i; 0, I) + log|det d eps / d x|.

Input ``x`` is a dequantized image on the unit scale, ``x = (v + u) / K`` in [0, 1)^D (see
``flows.likelihood``); it is shifted to [-0.5, 0.5) (unit Jacobian) or, with ``logit_alpha``,
logit-transformed (Jacobian counted). ``log_prob`` is therefore the density of ``x`` on the
unit scale, and bits/dim follow from ``flows.likelihood.bits_per_dim``.

Image sizes must be divisible by ``2**num_levels``; other sizes are rejected with a clear
error (pad them in the data pipeline, ``config.data.pad_to``, as openai/glow does for MNIST).

Class conditioning (``num_classes=N``): the label enters as a one-hot context. ``condition_on``
chooses where: ``'top'`` (Glow: the top prior only), ``'priors'`` (every split prior and the
top prior), ``'all'`` (priors and every coupling network, through a learned class embedding).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from flows.bijectors import Bijector, GaussianSplit, LearnedPrior, Logit, Shift, Squeeze
from flows.bijectors.coupling import check_coupling
from flows.errors import ConfigError
from flows.models.base import DensityModel, latent_log_prob
from flows.models.registry import register_model
from flows.models.steps import StepStack, check_backprop, glow_step
from flows.nn.backend import resolve_compute_dtype, resolve_conv_impl

CONDITION_ON = ("top", "priors", "all")
# Glow's names of flows.models.steps.BACKPROP, its default first.
BACKPROP_MODES = ("autodiff", "checkpoint", "invertible")


def check_spline(num_segments, bound) -> None:
    """A one-line ``ConfigError`` unless ``num_segments`` is a positive integer (below 1000:
    every bin keeps at least 1e-3 of the interval) and ``bound`` a positive number."""
    if isinstance(num_segments, bool) or not isinstance(num_segments, int):
        raise ConfigError(f"spline_num_segments must be an integer, got {num_segments!r}")
    if not 1 <= num_segments < 1000:
        raise ConfigError(f"spline_num_segments must be in 1..999, got {num_segments}")
    if isinstance(bound, bool) or not isinstance(bound, int | float) or not bound > 0:
        raise ConfigError(f"spline_bound must be a positive number, got {bound!r}")


class GlowLevel(Bijector):
    """Squeeze, K steps of flow, then a split prior (or the top prior on the last level).

    A bijection of the (H, W, C) input onto (H/2, W/2, 4C); on split levels the last
    ``4C - 4C//2`` channels of the output are standard-normal latents.
    """

    def __init__(
        self,
        in_channels: int,
        num_steps: int,
        hidden_channels: int,
        *,
        coupling: str,
        permutation: str,
        is_top: bool,
        coupling_context: int | None,
        prior_context: int | None,
        backprop: str = "autodiff",
        compute_dtype: str = "float32",
        remat_coupling_nets: bool = False,
        conv_impl: str = "auto",
        spline_num_segments: int = 8,
        spline_bound: float = 3.0,
        rngs: nnx.Rngs,
    ):
        channels = 4 * in_channels
        self.squeeze = Squeeze()
        self.steps = StepStack(
            lambda r: glow_step(
                channels,
                hidden_channels,
                coupling=coupling,
                permutation=permutation,
                context_features=coupling_context,
                compute_dtype=compute_dtype,
                remat=remat_coupling_nets,
                conv_impl=conv_impl,
                spline_num_segments=spline_num_segments,
                spline_bound=spline_bound,
                rngs=r,
            ),
            num_steps,
            rngs=rngs,
            backprop=backprop,
        )
        if is_top:
            self.prior = LearnedPrior(channels, context_features=prior_context, rngs=rngs)
        else:
            self.prior = GaussianSplit(
                channels, context_features=prior_context, conv_impl=conv_impl, rngs=rngs
            )
        self.out_channels = channels
        self.kept_channels = channels if is_top else channels // 2

    def forward_with_features(self, x, *, context=None):
        """``(z, log|det|, features)``; features: the steps' output, before the prior."""
        x, _ = self.squeeze.forward_and_log_det(x)
        features, ld_steps = self.steps.forward_and_log_det(x, context=context)
        z, ld_prior = self.prior.forward_and_log_det(features, context=context)
        return z, ld_steps + ld_prior, features

    def forward_and_log_det(self, x, *, context=None):
        z, log_det, _ = self.forward_with_features(x, context=context)
        return z, log_det

    def inverse_and_log_det(self, z, *, context=None):
        z, ld_prior = self.prior.inverse_and_log_det(z, context=context)
        z, ld_steps = self.steps.inverse_and_log_det(z, context=context)
        z, _ = self.squeeze.inverse_and_log_det(z)
        return z, ld_steps + ld_prior

    def initialize(self, x, *, context=None):
        x = self.squeeze.forward(x)
        x = self.steps.initialize(x, context=context)
        return self.prior.initialize(x, context=context)


@register_model("glow")
class Glow(DensityModel):
    """Multi-scale Glow over images of shape ``image_shape = (H, W, C)``.

    Args (every one after ``num_classes`` is a field of ``config.model``, defaults here):
      image_shape: (H, W, C); H and W divisible by ``2**num_levels``.
      num_classes: None for p(x); N for a label-conditioned p(x | y).
      num_levels: L, the number of scales.
      num_steps: K, steps of flow per level.
      hidden_channels: width of the coupling networks.
      coupling: ``'affine'``, ``'additive'`` or ``'spline'`` (a rational-quadratic spline
        of ``x2`` whose knots Glow's conv net computes from ``x1``; the identity outside
        ``[-spline_bound, spline_bound]``; see ``flows.bijectors.spline``).
      permutation: ``'conv1x1_lu'``, ``'conv1x1'``, ``'shuffle'`` or ``'reverse'``.
      logit_alpha: None to shift x to [-0.5, 0.5); a float for RealNVP's logit transform.
      condition_on: where the label enters a conditional model (``'top'``, ``'priors'``,
        ``'all'``; see the module docstring).
      weight_y: Glow's auxiliary classifier: with ``weight_y > 0`` a zero-initialised linear
        classifier of the mean-pooled top features is trained with ``weight_y`` times its
        cross-entropy in bits (``CE / ln 2`` per example, as in openai/glow) added to the
        mean bits/dim (``log_prob_and_aux_loss``). Conditional models only: an
        unconditional one (``num_classes`` None) has no classifier whatever ``weight_y``.
      backprop: how each level's K steps are differentiated, one of ``BACKPROP_MODES``:
        ``'autodiff'``, ``'checkpoint'`` or ``'invertible'`` (training memory flat in K);
        the same gradients, up to rounding (the names' meanings: ``flows.models.steps``).
        Forward-mode autodiff needs one other than ``'invertible'`` (a custom VJP of its own).
      compute_dtype: matrix-product dtype of the coupling networks, ``'float32'``,
        ``'bfloat16'`` (products rounded to bf16, summed in f32; ActNorm, 1x1 convolutions,
        priors and every log-det stay float32, so log p(x) is exact for the map computed)
        or ``'auto'``: bfloat16 only where it is faster (GPU/TPU, or a CPU with native bf16
        dots), float32 otherwise (``flows.nn.backend.resolve_compute_dtype``).
      conv_impl: the convolutions of the coupling and split-prior networks: ``'gemm'``
        (``flows.nn.conv.conv2d_same``, matrix products with a hand-written VJP, fast on
        XLA:CPU), ``'lax'`` (``lax.conv_general_dilated`` with autodiff: ``jax.jvp`` and
        ``jax.jacfwd`` work through the model) or ``'auto'``: gemm on CPU, lax on GPU/TPU,
        decided by ``jax.default_backend()`` when the model is built
        (``flows.nn.backend.resolve_conv_impl``). ``self.conv_impl`` / ``self.compute_dtype``
        hold the resolved choices, ``self.conv_impl_reason`` / ``self.compute_dtype_reason``
        say why.
      remat_coupling_nets: recompute the coupling networks' hidden activations in the
        backward pass instead of storing them (see ``flows.nn.conditioners``).
      spline_num_segments, spline_bound: the spline coupling's number of segments (bins)
        and the half-width B of the interval ``[-B, B]`` it acts on (``coupling='spline'``
        only). After ActNorm the activations are about unit scale, so B = 3 covers nearly
        all of them; the zero-initialised network makes every spline start as the identity.

    The products that mix dimensions of the flow's map outside the networks (the 1x1
    convolutions, ``flows.bijectors.conv1x1``) run at ``Precision.HIGHEST`` on every
    backend, so the map computed is the one whose log-det is counted (GPUs would otherwise
    use TF32, TPUs bf16 passes).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int | None = None,
        *,
        num_levels: int = 3,
        num_steps: int = 8,
        hidden_channels: int = 128,
        coupling: str = "affine",
        permutation: str = "conv1x1_lu",
        logit_alpha: float | None = None,
        condition_on: str = "top",
        weight_y: float = 0.0,
        backprop: str = "autodiff",
        compute_dtype: str = "float32",
        conv_impl: str = "auto",
        remat_coupling_nets: bool = False,
        spline_num_segments: int = 8,
        spline_bound: float = 3.0,
        rngs: nnx.Rngs,
    ):
        super().__init__(image_shape, num_classes)
        check_backprop(backprop, BACKPROP_MODES, "Glow")
        check_coupling(coupling)
        if coupling == "spline":
            check_spline(spline_num_segments, spline_bound)
        compute_dtype, self.compute_dtype_reason = resolve_compute_dtype(compute_dtype)
        conv_impl, self.conv_impl_reason = resolve_conv_impl(conv_impl)
        self.compute_dtype, self.conv_impl = compute_dtype, conv_impl
        h, w, c = self.image_shape
        if num_levels < 1:
            raise ConfigError(f"num_levels must be >= 1, got {num_levels}")
        factor = 2**num_levels
        if h % factor or w % factor:
            raise ConfigError(
                f"image size {h}x{w} is not divisible by 2**num_levels = {factor}; "
                f"pad the images (config.data.pad_to) or use fewer levels"
            )
        if condition_on not in CONDITION_ON:
            raise ConfigError(f"condition_on must be one of {CONDITION_ON}, got {condition_on!r}")
        self.condition_on = condition_on
        self.preprocess = Shift(-0.5) if logit_alpha is None else Logit(logit_alpha)

        levels, shapes = [], []
        for level in range(num_levels):
            is_top = level == num_levels - 1
            prior_ctx = num_classes if (is_top or condition_on != "top") else None
            coupling_ctx = num_classes if condition_on == "all" else None
            lvl = GlowLevel(
                c,
                num_steps,
                hidden_channels,
                coupling=coupling,
                permutation=permutation,
                is_top=is_top,
                coupling_context=coupling_ctx,
                prior_context=prior_ctx,
                backprop=backprop,
                compute_dtype=compute_dtype,
                remat_coupling_nets=remat_coupling_nets,
                conv_impl=conv_impl,
                spline_num_segments=spline_num_segments,
                spline_bound=spline_bound,
                rngs=rngs,
            )
            levels.append(lvl)
            h, w = h // 2, w // 2
            shapes.append((h, w, lvl.out_channels - lvl.kept_channels) if not is_top else None)
            if is_top:
                shapes[-1] = (h, w, lvl.out_channels)
            c = lvl.kept_channels
        self.levels = nnx.List(levels)
        self.latent_shapes = tuple(shapes)
        if weight_y < 0:
            raise ConfigError(f"weight_y must be >= 0, got {weight_y}")
        self.weight_y = float(weight_y) if num_classes is not None else 0.0
        aux = None
        if self.weight_y > 0:
            # Glow's weight_y head: mean-pooled top features -> zero-initialised linear.
            aux = nnx.Linear(
                levels[-1].out_channels,
                num_classes,
                kernel_init=nnx.initializers.zeros_init(),
                rngs=rngs,
            )
        self.aux_classifier = aux if aux is not None else nnx.data(None)

    # -- the bijection --------------------------------------------------------------------
    def _encode(self, x, context):
        self.check_images(x)
        ctx = self.context_features(context)
        h, log_det = self.preprocess.forward_and_log_det(x)
        latents = []
        for level in self.levels:
            h, ld, features = level.forward_with_features(h, context=ctx)
            log_det = log_det + ld
            latents.append(h[..., level.kept_channels :] if level is not self.levels[-1] else h)
            h = h[..., : level.kept_channels]
        return latents, log_det, features

    def forward_and_log_det(self, x, *, context=None):
        """x in [0, 1)^D -> (list of standard-normal latents, one per level; log|det|)."""
        latents, log_det, _ = self._encode(x, context)
        return latents, log_det

    def inverse_and_log_det(self, latents, *, context=None):
        ctx = self.context_features(context)
        log_det = jnp.zeros(latents[0].shape[:1], latents[0].dtype)
        h = None
        for level, eps in zip(reversed(self.levels), reversed(latents), strict=True):
            z = eps if h is None else jnp.concatenate([h, eps], axis=-1)
            h, ld = level.inverse_and_log_det(z, context=ctx)
            log_det = log_det + ld
        x, ld = self.preprocess.inverse_and_log_det(h)
        return x, log_det + ld

    def initialize(self, x, *, context=None):
        """Data-dependent initialisation (ActNorm statistics) on a batch of dequantized data."""
        self.check_images(x)
        ctx = self.context_features(context)
        h = self.preprocess.forward(x)
        for level in self.levels:
            h = level.initialize(h, context=ctx)
            h = h[..., : level.kept_channels]

    # -- densities and samples ----------------------------------------------------------
    def log_prob(self, x, *, context=None):
        """Per-example log density of x on the unit scale, in nats (log p(x|y) if conditional)."""
        return self.log_prob_and_aux_logits(x, context=context)[0]

    def log_prob_and_aux_logits(self, x, *, context=None):
        """``(log p(x|y), logits of the auxiliary classifier or None)`` in one pass."""
        latents, log_det, top = self._encode(x, context)
        log_prob = latent_log_prob(latents, log_det)
        logits = None
        if self.aux_classifier is not None:
            logits = self.aux_classifier(jnp.mean(top, axis=(1, 2)))
        return log_prob, logits

    def log_prob_and_aux_loss(self, x, *, context=None):
        """Training hook: ``weight_y * CE / ln 2``, the auxiliary classifier's mean
        cross-entropy of the labels in ``context`` in bits (openai/glow's ``weight_y *
        bits_y``, added to the bits/dim), computed in the same pass as log p(x|y).

        Metric ``aux_ce_bits``: that cross-entropy in bits, ``-mean log2 q(y | x)``.
        """
        log_prob, logits = self.log_prob_and_aux_logits(x, context=context)
        if logits is None:
            return log_prob, jnp.zeros((), jnp.float32), {}
        targets = self.context_features(context)  # one-hot (or given class weights)
        ce_nats = -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), axis=1))
        ce_bits = ce_nats / math.log(2.0)
        return log_prob, self.weight_y * ce_bits, {"aux_ce_bits": ce_bits}

    def sample_latents(self, key, num: int, temperature: float = 1.0):
        keys = jax.random.split(key, len(self.latent_shapes))
        return [
            temperature * jax.random.normal(k, (num, *shape))
            for k, shape in zip(keys, self.latent_shapes, strict=True)
        ]

    @classmethod
    def describe_config(cls, m) -> str:
        """E.g. ``L=2 K=8 h=64 affine conv1x1_lu logit(0.001) cond:all``; a spline coupling
        with its segments and bound, ``spline(8,B=3)``."""
        coupling = m["coupling"]
        if coupling == "spline":
            coupling = f"spline({m['spline_num_segments']},B={m['spline_bound']:g})"
        parts = [
            f"L={m['num_levels']} K={m['num_steps']} h={m['hidden_channels']} "
            f"{coupling} {m['permutation']}"
        ]
        if m.get("logit_alpha") is not None:
            parts.append(f"logit({m['logit_alpha']})")
        if m.get("conditional"):
            cond = f"cond:{m['condition_on']}"
            if m.get("weight_y"):
                cond += f"+aux{m['weight_y']:g}"
            parts.append(cond)
        return " ".join(parts)
