"""Glow (Kingma & Dhariwal 2018): a multi-scale flow of L levels with K steps each.

Level l: ``Squeeze -> K x [ActNorm -> permutation -> coupling] -> GaussianSplit`` (the last
level ends in a ``LearnedPrior`` instead of a split). Each split factors half of the channels
out; every factored-out part, and the top latent, is standardised by its learned (optionally
label-conditional) Gaussian prior, so the whole model is one bijection onto independent
standard normals and

    log p(x | y) = sum_i log N(eps_i; 0, I) + log|det d eps / d x|.

Input ``x`` is a dequantized image on the unit scale, ``x = (v + u) / K`` in [0, 1)^D (see
``flows.metrics``); it is shifted to [-0.5, 0.5) (unit Jacobian) or, with ``logit_alpha``,
logit-transformed (Jacobian counted). ``log_prob`` is therefore the density of ``x`` on the
unit scale, and bits/dim follow from ``flows.metrics.bits_per_dim``.

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

from flows.bijectors import Bijector, Buffer, GaussianSplit, LearnedPrior, Logit, Shift, Squeeze
from flows.models.steps import StepStack, check_backprop, glow_step

CONDITION_ON = ("top", "priors", "all")
_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(eps: jax.Array) -> jax.Array:
    """Per-example log N(eps; 0, I), summed over every axis but the first."""
    flat = eps.reshape(eps.shape[0], -1)
    return -0.5 * jnp.sum(flat**2 + _LOG_2PI, axis=1)


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
                rngs=r,
            ),
            num_steps,
            rngs=rngs,
            backprop=backprop,
        )
        if is_top:
            self.prior = LearnedPrior(channels, context_features=prior_context, rngs=rngs)
        else:
            self.prior = GaussianSplit(channels, context_features=prior_context, rngs=rngs)
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


class Glow(nnx.Module):
    """Multi-scale Glow over images of shape ``image_shape = (H, W, C)``.

    Args:
      image_shape: (H, W, C); H and W divisible by ``2**num_levels``.
      num_levels: L, the number of scales.
      num_steps: K, steps of flow per level.
      hidden_channels: width of the coupling networks.
      coupling: ``'affine'`` or ``'additive'``.
      permutation: ``'conv1x1_lu'``, ``'conv1x1'``, ``'shuffle'`` or ``'reverse'``.
      num_classes: None for p(x); N for a label-conditioned p(x | y).
      condition_on: where the label enters (``'top'``, ``'priors'``, ``'all'``).
      logit_alpha: None to shift x to [-0.5, 0.5); a float for RealNVP's logit transform.
      backprop: how each level's K steps are differentiated: ``'autodiff'`` (keeps every
        step's activations), ``'checkpoint'`` (``jax.checkpoint``: keeps each step's input and
        recomputes its activations) or ``'invertible'`` (keeps only the level's output and
        reconstructs each step's input with its inverse: training memory flat in K). All
        three give the same gradients (up to rounding); see ``flows.models.steps``.
      auxiliary_classifier: Glow's ``weight_y`` head, a zero-initialised linear classifier of
        the mean-pooled top features (``log_prob_and_aux_logits``); needs ``num_classes``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        *,
        num_levels: int = 3,
        num_steps: int = 8,
        hidden_channels: int = 128,
        coupling: str = "affine",
        permutation: str = "conv1x1_lu",
        num_classes: int | None = None,
        condition_on: str = "top",
        logit_alpha: float | None = None,
        backprop: str = "autodiff",
        auxiliary_classifier: bool = False,
        rngs: nnx.Rngs,
    ):
        check_backprop(backprop)
        image_shape = tuple(int(d) for d in image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
        h, w, c = image_shape
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        factor = 2**num_levels
        if h % factor or w % factor:
            raise ValueError(
                f"image size {h}x{w} is not divisible by 2**num_levels = {factor}; "
                f"pad the images (config.data.pad_to) or use fewer levels"
            )
        if condition_on not in CONDITION_ON:
            raise ValueError(f"condition_on must be one of {CONDITION_ON}, got {condition_on!r}")
        self.image_shape = image_shape
        self.num_classes = num_classes
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
        if num_classes is not None:
            # log p(y) for the marginal and Bayes' rule: uniform until set_label_prior().
            self.log_label_prior = Buffer(jnp.full((num_classes,), -math.log(num_classes)))
        aux = None
        if auxiliary_classifier:
            if num_classes is None:
                raise ValueError("auxiliary_classifier needs num_classes")
            # Glow's weight_y head: mean-pooled top features -> zero-initialised linear.
            aux = nnx.Linear(
                levels[-1].out_channels,
                num_classes,
                kernel_init=nnx.initializers.zeros_init(),
                rngs=rngs,
            )
        self.aux_classifier = aux if aux is not None else nnx.data(None)

    # -- conditioning -------------------------------------------------------------------
    def _context(self, labels):
        if self.num_classes is None:
            if labels is not None:
                raise ValueError("this Glow is unconditional; do not pass context")
            return None
        if labels is None:
            raise ValueError("this Glow is class-conditional: pass context=labels")
        labels = jnp.asarray(labels)
        if jnp.issubdtype(labels.dtype, jnp.integer):
            return jax.nn.one_hot(labels, self.num_classes)
        if labels.ndim != 2 or labels.shape[1] != self.num_classes:
            raise ValueError(
                f"context must be integer labels (batch,) or class weights (batch, "
                f"{self.num_classes}), got {labels.dtype} {labels.shape}"
            )
        return labels  # (batch, num_classes) class weights, e.g. one-hot or soft labels

    def _check_images(self, x):
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected images of shape (batch, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(x.shape)}"
            )

    # -- the bijection --------------------------------------------------------------------
    def _encode(self, x, context):
        self._check_images(x)
        ctx = self._context(context)
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
        ctx = self._context(context)
        log_det = jnp.zeros(latents[0].shape[:1], latents[0].dtype)
        h = None
        for level, eps in zip(reversed(self.levels), reversed(latents), strict=True):
            z = eps if h is None else jnp.concatenate([h, eps], axis=-1)
            h, ld = level.inverse_and_log_det(z, context=ctx)
            log_det = log_det + ld
        x, ld = self.preprocess.inverse_and_log_det(h)
        return x, log_det + ld

    def inverse(self, latents, *, context=None):
        return self.inverse_and_log_det(latents, context=context)[0]

    def initialize(self, x, *, context=None):
        """Data-dependent initialisation (ActNorm statistics) on a batch of dequantized data."""
        self._check_images(x)
        ctx = self._context(context)
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
        log_prob = sum(standard_normal_log_prob(e) for e in latents) + log_det
        logits = None
        if self.aux_classifier is not None:
            logits = self.aux_classifier(jnp.mean(top, axis=(1, 2)))
        return log_prob, logits

    # -- class-conditional: marginal and Bayes' rule ----------------------------------------
    def set_label_prior(self, counts) -> None:
        """Sets p(y) to the normalised ``counts`` (the training label frequencies)."""
        counts = jnp.asarray(counts, jnp.float32)
        if self.num_classes is None or counts.shape != (self.num_classes,):
            raise ValueError(f"expected {self.num_classes} class counts, got {counts.shape}")
        self.log_label_prior[...] = jnp.log(counts / jnp.sum(counts))

    def class_log_likelihoods(self, x):
        """``log p(x | y)`` for every class: shape (batch, num_classes)."""
        if self.num_classes is None:
            raise ValueError("class_log_likelihoods needs a class-conditional Glow")
        labels = jnp.broadcast_to(jnp.arange(self.num_classes)[:, None], (self.num_classes, len(x)))
        per_class = jax.lax.map(lambda y: self.log_prob(x, context=y), labels)
        return per_class.T

    def marginal_log_prob(self, x):
        """``log p(x) = logsumexp_y [log p(x|y) + log p(y)]`` (nats, per example)."""
        joint = self.class_log_likelihoods(x) + self.log_label_prior[...]
        return jax.scipy.special.logsumexp(joint, axis=1)

    def classify(self, x):
        """Bayes' rule: ``p(y|x) = p(x|y) p(y) / p(x)``, shape (batch, num_classes)."""
        joint = self.class_log_likelihoods(x) + self.log_label_prior[...]
        return jax.nn.softmax(joint, axis=1)

    def sample_latents(self, key, num: int, temperature: float = 1.0):
        keys = jax.random.split(key, len(self.latent_shapes))
        return [
            temperature * jax.random.normal(k, (num, *shape))
            for k, shape in zip(keys, self.latent_shapes, strict=True)
        ]

    def sample(self, num: int, key: jax.Array, *, temperature: float = 1.0, context=None):
        """``num`` images in [0, 1) (continuous; quantize with ``flows.metrics.quantize``)."""
        return self.inverse(self.sample_latents(key, num, temperature), context=context)
