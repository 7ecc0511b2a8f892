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


def per_example_bits_per_dim(model, images, labels, key, num_levels: int) -> jax.Array:
    """Bits/dim of each example under one draw of dequantization noise."""
    x = dequantize(key, images, num_levels)
    context = labels if is_conditional(model) else None
    log_prob = model.log_prob(x, context=context)
    return bits_per_dim(log_prob, math.prod(images.shape[1:]), num_levels)


def density_loss(num_levels: int, weight_y: float = 0.0):
    """``loss_fn(model, batch, key)`` for the trainer: mean bits/dim (+ weight_y * CE)."""

    def loss_fn(model, batch, key):
        bpd = per_example_bits_per_dim(model, batch["image"], batch["label"], key, num_levels)
        loss = jnp.mean(bpd)
        metrics = {"bpd": loss}
        if weight_y and is_conditional(model):
            x = dequantize(jax.random.fold_in(key, 1), batch["image"], num_levels)
            logits = model.auxiliary_logits(x)
            ce = -jnp.mean(
                jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], axis=1)
            )
            loss = loss + weight_y * ce
            metrics["aux_ce"] = ce
        return loss, metrics

    return loss_fn
