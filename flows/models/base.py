"""The model interface: all that the trainer, evaluation, sampling and compare see of a family.

A model is a density ``p(x)`` (or ``p(x | y)``) of images ``x`` of shape ``image_shape``
on the unit scale, ``x = (v + u) / K`` in ``[0, 1)^D`` (``flows.likelihood``), written as a
bijection ``f`` onto latents with a standard-normal base density:

    log p(x | y) = log N(f(x); 0, I) + log|det df/dx|          (nats, per example)

Every family subclasses ``DensityModel`` and implements

* ``initialize(x, *, context=None)``: data-dependent initialisation on a batch (ActNorm);
* ``forward_and_log_det(x, *, context=None) -> (latents, log|det|)`` (data -> latent; the
  latents are any pytree, e.g. Glow's list of one array per level);
* ``inverse_and_log_det(latents, *, context=None) -> (x, log|det|)`` (latent -> data);
* ``sample_latents(key, num, temperature) -> latents`` (standard normals times T);
* ``log_prob(x, *, context=None)`` (the default sums the base density and the log-det);
* ``describe_config(model_config)``, a classmethod: the family's short text of a config
  (the default: its name and the fields that differ from their defaults).

and inherits ``inverse``, ``sample``, and for label-conditioned models (``num_classes`` set)
``class_log_likelihoods``, ``marginal_log_prob``, ``classify`` (Bayes' rule) and
``set_label_prior``, and ``sample(..., guidance=w, denoise=True)``.
``log_prob_and_aux_loss`` is the training objective's hook: a family with
an auxiliary loss (Glow's ``weight_y`` classifier) overrides it, so the trainer never needs to
know which family it runs. ``dequantize(images, noise, num_bins) -> (x, log q(u | v))``
turns integer images into x with the model's dequantizer (uniform unless the config asks for
a variational one, ``flows.bijectors.dequantizer``); objectives and evaluation bound
``log P(v)`` through it, whatever the family.

Classifier-free guidance: a family whose networks can run without a label (the all-zero
class weights of ``null_context``, which label dropout, ``model.label_dropout``, trains)
overrides ``guided_inverse(latents, context=..., guidance=w)``; with guidance w it extrapolates
its networks' outputs away from the unconditional ones, ``(1 + w) f(. | y) - w f(. | none)``.
The default raises ``ConfigError``. A family whose guided sampler is itself an exact flow
(TarFlow, Jet) also overrides ``guided_forward_and_log_det`` and
``guided_inverse_and_log_det``, which give ``guided_log_prob(x, context=y, guidance=w)``,
the exact ``log p_w(x | y)`` of the guided model (at w = 0, ``log_prob``). A family whose
inverse is iterative (TarFlow's autoregressive blocks) overrides ``inverse_with_sampler``
and ``choose_sampler``: ``sample(..., sampler=flows.models.jacobi.Sampler(...))`` inverts it
as the sampler says (sequential or Jacobi per block) and ``sample_and_stats`` returns what
the sampler did (Jacobi updates per block). Gaussian noise augmentation (``model.noise_sigma``,
TarFlow's generation mode): the model was trained on ``x + sigma * N(0, I)``, so it is a
density of noisy images and ``denoise`` removes the noise from a sample in one step of
Tweedie's formula, ``x + sigma^2 grad_x log p(x | y)``.

Conditioning: ``context`` is integer labels ``(batch,)`` in ``[0, num_classes)`` (one-hot
encoded here, in float32; out of range: ``DatasetError`` for concrete labels, NaN features
under jit) or class weights ``(batch, num_classes)``; the label prior ``p(y)`` is a buffer,
uniform until ``set_label_prior(counts)`` sets the training label frequencies.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flows.bijectors import Buffer
from flows.bijectors.dequantizer import UniformDequantizer
from flows.errors import ConfigError, DatasetError

_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(eps: jax.Array) -> jax.Array:
    """Per-example log N(eps; 0, I), summed over every axis but the first."""
    flat = eps.reshape(eps.shape[0], -1)
    return -0.5 * jnp.sum(flat**2 + _LOG_2PI, axis=1)


def latent_log_prob(latents, log_det: jax.Array) -> jax.Array:
    """``log N(latents; 0, I) + log|det|`` per example, for any pytree of latents."""
    return sum(standard_normal_log_prob(e) for e in jax.tree.leaves(latents)) + log_det


def is_guided(guidance) -> bool:
    """Whether a guidance weight asks for the guided computation: a traced weight, or a
    number other than 0 (a concrete 0 takes the plain, unguided path)."""
    return isinstance(guidance, jax.core.Tracer) or bool(guidance)


def is_conditional(model) -> bool:
    """Whether ``model`` is a label-conditioned ``p(x | y)``."""
    return getattr(model, "num_classes", None) is not None


class DensityModel(nnx.Module):
    """Base class of the model families (see the module docstring for the interface).

    Subclasses call ``super().__init__(image_shape, num_classes)`` first. A registered
    family's constructor is ``__init__(self, image_shape, num_classes=None, *, <its config
    fields, each with its default>, rngs)`` (``flows.models.registry.register_model``).
    """

    def __init__(self, image_shape, num_classes: int | None):
        image_shape = tuple(int(d) for d in image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.image_shape = image_shape
        self.num_classes = num_classes
        # How integer images become x on the unit scale; build_model may replace it with a
        # learned one (model.dequantization = 'variational').
        self.dequantizer = UniformDequantizer()
        # Set by build_model from config.model (flows.models.registry): the probability of
        # training a label-conditioned model without its label, and the std of the Gaussian
        # noise added to its training inputs (on the unit scale).
        self.label_dropout = 0.0
        self.noise_sigma = 0.0
        if num_classes is not None:
            # log p(y) for the marginal and Bayes' rule: uniform until set_label_prior().
            self.log_label_prior = Buffer(jnp.full((num_classes,), -math.log(num_classes)))

    # -- what a family implements -------------------------------------------------------
    def initialize(self, x, *, context=None) -> None:
        raise NotImplementedError

    def forward_and_log_det(self, x, *, context=None):
        raise NotImplementedError

    def inverse_and_log_det(self, latents, *, context=None):
        raise NotImplementedError

    def sample_latents(self, key, num: int, temperature: float = 1.0):
        raise NotImplementedError

    @classmethod
    def describe_config(cls, model_config) -> str | None:
        """A short text of a ``config.model`` of this family (every field set), the family's
        part of ``flows.models.registry.describe_model``; None (this default): the family's
        name and the fields that differ from their defaults."""
        return None

    # -- derived ------------------------------------------------------------------------
    def dequantize(self, images, noise, num_bins: int):
        """``(x, log q(u | v))`` per example: integer ``images`` v dequantized to the unit
        scale with ``noise`` in [0, 1) by the model's dequantizer (uniform: ``x = (v + u)/K``,
        ``log q = 0``; variational: u a learned function of the noise and v). Every bound on
        ``log P(v)`` is ``bits_per_dim(log p(x) - log q(u | v))``
        (``flows.bijectors.dequantizer``)."""
        return self.dequantizer.dequantize(images, noise, num_bins)

    def log_prob(self, x, *, context=None):
        """Per-example log density of x on the unit scale, in nats (log p(x|y) if conditional)."""
        return latent_log_prob(*self.forward_and_log_det(x, context=context))

    def log_prob_and_aux_loss(self, x, *, context=None):
        """``(log p(x|y), auxiliary loss, metrics)`` for training: the loss is a scalar added
        to the mean bits/dim (0 for families without one), metrics a dict of scalars."""
        return self.log_prob(x, context=context), jnp.zeros((), jnp.float32), {}

    def inverse(self, latents, *, context=None):
        return self.inverse_and_log_det(latents, context=context)[0]

    def sample(
        self,
        num: int,
        key: jax.Array,
        *,
        temperature: float = 1.0,
        context=None,
        guidance: float = 0.0,
        denoise: bool = False,
        sampler=None,
    ):
        """``num`` images in [0, 1) (continuous; quantize with ``flows.likelihood.quantize``).

        ``guidance`` (a Python float, conditional models): classifier-free guidance weight,
        0 for plain conditional samples. ``denoise``: one Tweedie step (``denoise``) for a
        model trained with Gaussian noise. ``sampler``: how an autoregressive family inverts
        its blocks (``flows.models.jacobi.Sampler``; None: its plain inverse)."""
        return self.sample_and_stats(
            num,
            key,
            temperature=temperature,
            context=context,
            guidance=guidance,
            denoise=denoise,
            sampler=sampler,
        )[0]

    def sample_and_stats(
        self,
        num: int,
        key: jax.Array,
        *,
        temperature: float = 1.0,
        context=None,
        guidance: float = 0.0,
        denoise: bool = False,
        sampler=None,
    ):
        """``(sample(...), stats)``: stats is ``inverse_with_sampler``'s (``{}`` without a
        sampler)."""
        latents = self.sample_latents(key, num, temperature)
        stats = {}
        if sampler is not None:
            x, _, stats = self.inverse_with_sampler(
                latents, context=context, guidance=float(guidance), sampler=sampler
            )
        elif guidance:
            x = self.guided_inverse(latents, context=context, guidance=float(guidance))
        else:
            x = self.inverse(latents, context=context)
        return (self.denoise(x, context=context) if denoise else x), stats

    # -- samplers (families whose inverse is iterative) ---------------------------------
    def inverse_with_sampler(self, latents, *, context=None, guidance=0.0, sampler=None):
        """``(x, log|det|, stats)``: the inverse (guided when ``guidance`` is non-zero) as
        ``sampler`` says (``flows.models.jacobi.Sampler``). A family with an autoregressive
        inverse (TarFlow) overrides it; this default is the closed-form inverse, with no
        stats, and refuses a sampler that asks for Jacobi."""
        self.check_sampler(sampler)
        if is_guided(guidance):
            x, log_det = self.guided_inverse_and_log_det(
                latents, context=context, guidance=guidance
            )
        else:
            x, log_det = self.inverse_and_log_det(latents, context=context)
        return x, log_det, {}

    def _has_jacobi(self) -> bool:
        return type(self).inverse_with_sampler is not DensityModel.inverse_with_sampler

    def check_sampler(self, sampler) -> None:
        """A one-line ``ConfigError`` when ``sampler`` asks for Jacobi updates of a family
        whose inverse is in closed form (nothing to iterate)."""
        if sampler is not None and sampler.uses_jacobi() and not self._has_jacobi():
            raise ConfigError(
                f"{type(self).__name__}'s inverse is in closed form: the jacobi sampler is "
                "for autoregressive families (TarFlow); use sampler 'sequential' or 'auto'"
            )

    def choose_sampler(self, latents, *, context=None, guidance=0.0, sampler):
        """``'auto'``: ``sampler`` with a method for every block and the reason. Families
        with an iterative inverse override this (they measure); here there is nothing to
        choose."""
        import dataclasses

        reason = f"{type(self).__name__}'s inverse is in closed form: nothing to choose"
        return dataclasses.replace(sampler, methods="sequential", reason=reason)

    # -- guidance and denoising ---------------------------------------------------------
    def null_context(self, batch: int):
        """The "no label" context: all-zero class weights (batch, num_classes)."""
        if self.num_classes is None:
            raise ValueError("null_context needs a class-conditional model")
        return jnp.zeros((batch, self.num_classes), jnp.float32)

    def guided_inverse(self, latents, *, context, guidance: float):
        """The inverse with classifier-free guidance weight ``guidance`` (families that
        support it override this)."""
        raise ConfigError(self._no_guidance())

    def guided_inverse_and_log_det(self, latents, *, context, guidance: float):
        """``guided_inverse`` with its log|det| (families with guidance override this)."""
        raise ConfigError(self._no_guidance())

    def guided_forward_and_log_det(self, x, *, context, guidance):
        """The forward map (data -> latents) of the guided model, the inverse of
        ``guided_inverse``, with its log|det|: a family whose guided sampler is itself an
        exact flow (TarFlow: the guided shift and log-scale of a token depend on the tokens
        before it only; Jet: a guided coupling is a coupling) overrides this."""
        raise ConfigError(self._no_guidance())

    def guided_log_prob(self, x, *, context, guidance):
        """``log p_w(x | y)``: the exact density (nats, unit scale) of the guided model with
        weight ``guidance``, the distribution of ``guided_inverse`` of standard-normal
        latents (guided samples at temperature 1): ``log N(z; 0, I) + log|det|`` of
        ``guided_forward_and_log_det``. A concrete 0 is ``log_prob``, the conditional
        density."""
        if not is_guided(guidance):
            return self.log_prob(x, context=context)
        return latent_log_prob(
            *self.guided_forward_and_log_det(x, context=context, guidance=guidance)
        )

    def _no_guidance(self) -> str:
        return f"{type(self).__name__} has no classifier-free guidance; sample with guidance=0"

    def check_guidance(self, guidance: float) -> None:
        """A one-line ``ConfigError`` unless guidance ``w >= 0`` can be used with this model
        (w > 0: a family with guidance, a conditional model trained with label dropout)."""
        if not guidance:
            return
        if not (math.isfinite(guidance) and guidance > 0):
            raise ConfigError(f"guidance must be a finite number >= 0, got {guidance}")
        if type(self).guided_inverse is DensityModel.guided_inverse:  # not in this family
            raise ConfigError(self._no_guidance())
        if self.num_classes is None:
            raise ConfigError("guidance needs a label-conditioned model")
        if not self.label_dropout > 0:
            raise ConfigError(
                "guidance needs a model trained with model.label_dropout > 0 (its "
                "unconditional branch was never trained)"
            )

    def denoise(self, x, *, context=None):
        """One step of Tweedie's formula, ``x + sigma^2 grad_x log p(x | y)``, for a model
        trained on inputs with Gaussian noise of std ``sigma = noise_sigma`` (unit scale)."""
        if not self.noise_sigma > 0:
            raise ConfigError("denoise needs a model trained with model.noise_sigma > 0")
        score = jax.grad(lambda v: jnp.sum(self.log_prob(v, context=context)))(x)
        return x + self.noise_sigma**2 * score

    # -- conditioning -------------------------------------------------------------------
    def context_features(self, labels):
        """The context the layers see: one-hot labels (or the given class weights); None for
        an unconditional model."""
        if self.num_classes is None:
            if labels is not None:
                raise ValueError("this model is unconditional; do not pass context")
            return None
        if labels is None:
            raise ValueError("this model is class-conditional: pass context=labels")
        if not isinstance(labels, jax.core.Tracer):
            labels = np.asarray(labels)  # concrete: checked in _one_hot
        if jnp.issubdtype(labels.dtype, jnp.integer):
            return self._one_hot(labels)
        if labels.ndim != 2 or labels.shape[1] != self.num_classes:
            raise ValueError(
                f"context must be integer labels (batch,) or class weights (batch, "
                f"{self.num_classes}), got {labels.dtype} {labels.shape}"
            )
        return jnp.asarray(labels)

    def _one_hot(self, labels):
        """One-hot float32 features of integer labels in ``[0, num_classes)``.

        Out of range, ``jax.nn.one_hot`` gives an all-zero row (no class at all); so concrete
        labels out of range raise ``DatasetError``, and traced ones (under jit, where they
        cannot be checked) give a row of NaN, which makes the log-density NaN, not wrong.
        """
        n = self.num_classes
        if isinstance(labels, np.ndarray):
            bad = labels[(labels < 0) | (labels >= n)]
            if bad.size:
                raise DatasetError(
                    f"label {bad[0]} is outside this model's classes 0..{n - 1} "
                    f"(num_classes={n}): pass labels in [0, {n})"
                )
        in_range = (labels >= 0) & (labels < n)
        return jnp.where(in_range[..., None], jax.nn.one_hot(labels, n, dtype=jnp.float32), jnp.nan)

    def check_images(self, x):
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected images of shape (batch, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(x.shape)}"
            )

    # -- class-conditional: marginal and Bayes' rule ------------------------------------
    def set_label_prior(self, counts) -> None:
        """Sets p(y) to the normalised ``counts`` (the training label frequencies)."""
        counts = jnp.asarray(counts, jnp.float32)
        if self.num_classes is None or counts.shape != (self.num_classes,):
            raise ValueError(f"expected {self.num_classes} class counts, got {counts.shape}")
        self.log_label_prior[...] = jnp.log(counts / jnp.sum(counts))

    def class_log_likelihoods(self, x, guidance=0.0):
        """``log p(x | y)`` for every class: shape (batch, num_classes); with ``guidance`` w
        the guided model's ``log p_w(x | y)`` (``guided_log_prob``)."""
        if self.num_classes is None:
            raise ValueError("class_log_likelihoods needs a class-conditional model")
        labels = jnp.broadcast_to(jnp.arange(self.num_classes)[:, None], (self.num_classes, len(x)))
        per_class = jax.lax.map(
            lambda y: self.guided_log_prob(x, context=y, guidance=guidance), labels
        )
        return per_class.T

    def marginal_log_prob(self, x):
        """``log p(x) = logsumexp_y [log p(x|y) + log p(y)]`` (nats, per example)."""
        joint = self.class_log_likelihoods(x) + self.log_label_prior[...]
        return jax.scipy.special.logsumexp(joint, axis=1)

    def classify(self, x):
        """Bayes' rule: ``p(y|x) = p(x|y) p(y) / p(x)``, shape (batch, num_classes)."""
        joint = self.class_log_likelihoods(x) + self.log_label_prior[...]
        return jax.nn.softmax(joint, axis=1)


def sample_compiled(
    model: DensityModel,
    num: int,
    key,
    temperature,
    context=None,
    guidance: float = 0.0,
    denoise: bool = False,
    sampler=None,
):
    """``model.sample(num, key, temperature=..., context=..., guidance=..., denoise=...,
    sampler=...)`` as one compiled program; the temperature and the labels are traced, so a
    grid over temperatures and classes compiles once per ``num``, guidance weight and
    sampler (eager ``sample`` compiles each layer's ops separately, on every call). Labels
    are not range-checked here (traced): out-of-range ones give NaN images."""
    return sample_and_stats_compiled(
        model, num, key, temperature, context, guidance, denoise, sampler
    )[0]


@functools.partial(nnx.jit, static_argnames=("num", "guidance", "denoise", "sampler"))
def sample_and_stats_compiled(
    model: DensityModel,
    num: int,
    key,
    temperature,
    context=None,
    guidance: float = 0.0,
    denoise: bool = False,
    sampler=None,
):
    """``sample_compiled`` with the sampler's stats (``DensityModel.sample_and_stats``)."""
    model.check_guidance(guidance)
    model.check_sampler(sampler)
    return model.sample_and_stats(
        num,
        key,
        temperature=temperature,
        context=context,
        guidance=guidance,
        denoise=denoise,
        sampler=sampler,
    )
