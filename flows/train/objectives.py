"""Training objectives for image density models: bits/dim under fresh dequantization noise.

The loss of a batch of integer images ``v`` (K = ``num_bins`` levels) is the mean over
examples of ``bits_per_dim(log p(x) - log q(u | v))``, ``(x, log q) = model.dequantize(v, e)``
with fresh uniform noise ``e`` each step: for uniform dequantization ``x = (v + e) / K`` and
``log q = 0`` (``flows.likelihood``); for a variational one the dequantizer's flow maps ``e`` to
``u`` and is trained by the same loss (``flows.bijectors.dequantizer``). Plus the model's own
auxiliary loss (``DensityModel.log_prob_and_aux_loss``; Glow's ``weight_y`` times its
classifier's cross-entropy in bits, reported as ``aux_ce_bits``). For a label-conditioned
model ``p`` is ``p(x | y)``. Metric ``bpd``: the mean bits/dim alone; with a variational
dequantizer also ``dequant_entropy_bits``, ``-mean log q(u | v) / (D log 2)``: a one-draw
estimate of q's entropy in bits/dim, 0 for uniform noise and negative as q concentrates
(``bpd`` = the model's cross-entropy term minus it).

Two options of any family (``config.model``, set on the model by ``build_model``):

* ``label_dropout`` p: each example of a conditional model is trained without its label
  with probability p (context: the all-zero class weights, ``DensityModel.null_context``),
  so one network learns p(x | y) and p(x) and sampling can use classifier-free guidance.
* ``noise_sigma``: Gaussian noise of that std is added to x after dequantization (TarFlow's
  generation mode). The model is then a density of the noisy images, ``bpd`` in training
  is theirs, and samples are denoised (``DensityModel.denoise``); evaluation still bounds
  ``log P(v)`` on clean dequantized images (a valid bound, looser than a noise-free model's).

Their random draws use keys folded from the step's key, so the uniform noise of a model
without them is what it always was.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flows.likelihood import bits_per_dim
from flows.models.base import is_conditional


def density_loss(num_bins: int):
    """``loss_fn(model, batch, key) -> (loss, metrics)`` for the trainer."""

    def loss_fn(model, batch, key):
        images, labels = batch["image"], batch["label"]
        noise = jax.random.uniform(key, images.shape, jnp.float32)
        x, log_q = model.dequantize(images, noise, num_bins)
        if model.noise_sigma:
            x = x + model.noise_sigma * jax.random.normal(jax.random.fold_in(key, 2), x.shape)
        context = labels if is_conditional(model) else None
        if context is not None and model.label_dropout:
            keep = jax.random.bernoulli(
                jax.random.fold_in(key, 1), 1.0 - model.label_dropout, labels.shape
            )
            context = model.context_features(labels) * keep[:, None].astype(jnp.float32)
        log_prob, aux_loss, aux_metrics = model.log_prob_and_aux_loss(x, context=context)
        num_dims = math.prod(images.shape[1:])
        bpd = jnp.mean(bits_per_dim(log_prob - log_q, num_dims, num_bins))
        metrics = {"bpd": bpd, **aux_metrics}
        if model.dequantizer.kind != "uniform":
            metrics["dequant_entropy_bits"] = -jnp.mean(log_q) / (num_dims * math.log(2.0))
        return bpd + aux_loss, metrics

    return loss_fn
