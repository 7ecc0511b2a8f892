"""The likelihood arithmetic: dequantization, bits/dim, importance weighting and standard
errors, computed the way flow papers compute them.

Discrete data ``v`` has ``K`` levels per value (``K = 2**n_bits``; 17 for the 8x8 digits).
Uniform dequantization maps it to the unit cube, ``x = (v + u) / K`` with ``u ~ U[0, 1)^D``.
For a density ``p`` of x on that unit scale,

    bits/dim = (-log p(x) + D log K) / (D log 2),

the negative log-likelihood of the discretised model in bits per dimension, lower-bounded
through Jensen's inequality (Theis et al. 2016): ``-log P(v) <= E_u[-log p((v + u)/K)] + D log K``.
A uniform density on [0, 1)^D gives exactly ``log2 K`` bits/dim (8 for 8-bit data).
With ``k`` importance samples of the noise, ``log P(v) >= logsumexp_i log p(x_i) - log k``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# The largest float32 below 1 (1 - 2**-24): dequantized values are clamped to it.
_BELOW_ONE = np.nextafter(np.float32(1), np.float32(0))


def dequantize(key: jax.Array, values: jax.Array, num_bins: int) -> jax.Array:
    """Uniform dequantization of integer ``values`` in ``[0, num_bins)`` onto [0, 1):
    ``dequantize_with_noise`` with ``u ~ U[0, 1)`` drawn from ``key``."""
    u = jax.random.uniform(key, values.shape, jnp.float32)
    return dequantize_with_noise(values, u, num_bins)


def dequantize_with_noise(values: jax.Array, u: jax.Array, num_bins: int) -> jax.Array:
    """``min((v + u) / K, 1 - 2**-24)`` in float32, for noise ``u`` in [0, 1).

    In exact arithmetic ``(v + u) / K < 1``, but float32 rounds ``v + u`` to ``v + 1`` when
    u is within about ``v * 2**-24`` of 1 (v = 16, u = 1 - 2**-24, K = 17 gives exactly 1.0),
    outside the unit cube the density lives on (a logit with alpha = 0 maps it to inf).
    The clamp moves only those rounded results, by one ulp, into the top cell: a set of
    noise values of measure zero in exact arithmetic, so the dequantized distribution and
    the bound are unchanged.
    """
    x = (values.astype(jnp.float32) + jnp.asarray(u, jnp.float32)) / num_bins
    return jnp.minimum(x, _BELOW_ONE)


def quantize(x: jax.Array, num_bins: int) -> jax.Array:
    """The inverse of dequantization: continuous x in [0, 1) -> integer levels (clipped)."""
    return jnp.clip(jnp.floor(x * num_bins), 0, num_bins - 1).astype(jnp.int32)


def bits_per_dim(log_prob, num_dims: int, num_bins: int):
    """Bits per dimension from a unit-scale log density (nats): (-log p + D log K) / (D log 2).

    Works on numbers, numpy and JAX arrays (per-example values stay per example).
    """
    return (-log_prob + num_dims * math.log(num_bins)) / (num_dims * math.log(2.0))


def importance_weighted_log_prob(log_probs: jax.Array) -> jax.Array:
    """``log (1/k) sum_i exp(log_probs[i])`` over axis 0: the k-sample dequantization bound."""
    k = log_probs.shape[0]
    return jax.scipy.special.logsumexp(log_probs, axis=0) - math.log(k)


def mean_and_standard_error(values) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n)) of a 1-D array."""
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
