"""Training objectives for image density models: bits/dim under fresh uniform dequantization.

The loss of a batch of integer images ``v`` (K = ``num_bins`` levels) is the mean over
examples of ``bits_per_dim(log p((v + u) / K))`` with fresh noise ``u`` each step (see
``flows.metrics``), plus the model's own auxiliary loss (``DensityModel.log_prob_and_aux_loss``;
Glow's ``weight_y`` times its classifier's cross-entropy in bits, reported as ``aux_ce_bits``).
For a label-conditioned model ``p`` is ``p(x | y)``. Metric ``bpd``: the mean bits/dim alone.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from flows.metrics import bits_per_dim, dequantize
from flows.models.base import is_conditional


def density_loss(num_bins: int):
    """``loss_fn(model, batch, key) -> (loss, metrics)`` for the trainer."""

    def loss_fn(model, batch, key):
        images, labels = batch["image"], batch["label"]
        x = dequantize(key, images, num_bins)
        context = labels if is_conditional(model) else None
        log_prob, aux_loss, aux_metrics = model.log_prob_and_aux_loss(x, context=context)
        bpd = jnp.mean(bits_per_dim(log_prob, math.prod(images.shape[1:]), num_bins))
        return bpd + aux_loss, {"bpd": bpd, **aux_metrics}

    return loss_fn
