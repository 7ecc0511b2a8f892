"""Training objectives for image density models: bits/dim under fresh uniform dequantization.

The loss of a batch of integer images ``v`` (K levels) is the mean over examples of
``bits_per_dim(log p((v + u) / K))`` with fresh noise ``u`` each step; see ``flows.metrics``.
For a label-conditioned model it is log p(x | y), plus ``weight_y`` times the cross-entropy
of an auxiliary classifier when the model has one (Glow's ``weight_y``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flows.metrics import bits_per_dim, dequantize


def is_conditional(model) -> bool:
    return getattr(model, "num_classes", None) is not None


def density_loss(num_levels: int, weight_y: float = 0.0):
    """``loss_fn(model, batch, key)`` for the trainer: mean bits/dim (+ weight_y * CE)."""

    def loss_fn(model, batch, key):
        images, labels = batch["image"], batch["label"]
        x = dequantize(key, images, num_levels)
        conditional = is_conditional(model)
        context = labels if conditional else None
        if weight_y and conditional:
            log_prob, logits = model.log_prob_and_aux_logits(x, context=context)
        else:
            log_prob, logits = model.log_prob(x, context=context), None
        bpd = jnp.mean(bits_per_dim(log_prob, math.prod(images.shape[1:]), num_levels))
        metrics = {"bpd": bpd}
        loss = bpd
        if logits is not None:
            log_p = jax.nn.log_softmax(logits)
            ce = -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=1))
            loss = loss + weight_y * ce
            metrics["aux_ce"] = ce
        return loss, metrics

    return loss_fn
