"""Training objectives for image density models: bits/dim under fresh dequantization noise.

The loss of a batch of integer images ``v`` (K = ``num_bins`` levels) is the mean over
examples of ``bits_per_dim(log p(x) - log q(u | v))``, ``(x, log q) = model.dequantize(v, e)``
with fresh uniform noise ``e`` each step: for uniform dequantization ``x = (v + e) / K`` and
``log q = 0`` (``flows.metrics``); for a variational one the dequantizer's flow maps ``e`` to
``u`` and is trained by the same loss (``flows.bijectors.dequantizer``). Plus the model's own
auxiliary loss (``DensityModel.log_prob_and_aux_loss``; Glow's ``weight_y`` times its
classifier's cross-entropy in bits, reported as ``aux_ce_bits``). For a label-conditioned
model ``p`` is ``p(x | y)``. Metric ``bpd``: the mean bits/dim alone; with a variational
dequantizer also ``dequant_entropy_bits``, ``-mean log q(u | v) / (D log 2)``: a one-draw
estimate of q's entropy in bits/dim, 0 for uniform noise and negative as q concentrates
(``bpd`` = the model's cross-entropy term minus it).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flows.metrics import bits_per_dim
from flows.models.base import is_conditional


def density_loss(num_bins: int):
    """``loss_fn(model, batch, key) -> (loss, metrics)`` for the trainer."""

    def loss_fn(model, batch, key):
        images, labels = batch["image"], batch["label"]
        noise = jax.random.uniform(key, images.shape, jnp.float32)
        x, log_q = model.dequantize(images, noise, num_bins)
        context = labels if is_conditional(model) else None
        log_prob, aux_loss, aux_metrics = model.log_prob_and_aux_loss(x, context=context)
        num_dims = math.prod(images.shape[1:])
        bpd = jnp.mean(bits_per_dim(log_prob - log_q, num_dims, num_bins))
        metrics = {"bpd": bpd, **aux_metrics}
        if model.dequantizer.kind != "uniform":
            metrics["dequant_entropy_bits"] = -jnp.mean(log_q) / (num_dims * math.log(2.0))
        return bpd + aux_loss, metrics

    return loss_fn
