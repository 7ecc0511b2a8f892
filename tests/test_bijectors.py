"""Generic tests, run for every entry of the bijector registry."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.bijector_registry import REGISTRY

BATCH = 2


def _inputs(entry, dtype, seed=0):
    kx, kc = jax.random.split(jax.random.key(seed))
    shape = (BATCH, *entry.event_shape)
    if entry.domain == "unit":
        x = jax.random.uniform(kx, shape, dtype, 0.02, 0.98)
    else:
        x = jax.random.normal(kx, shape, dtype)
    ctx = None
    if entry.context_features:
        features = entry.context_features
        features = (features,) if isinstance(features, int) else tuple(features)
        ctx = jax.random.normal(kc, (BATCH, *features), dtype)
    return x, ctx


def build(entry, dtype=jnp.float32, seed=0):
    """A layer with every float parameter perturbed and data-dependent init done."""
    layer = entry.make(nnx.Rngs(seed))
    x, ctx = _inputs(entry, dtype, seed)
    rng = np.random.default_rng(seed + 1)  # numpy noise: no per-shape XLA compilation

    def perturb(v):
        if jnp.issubdtype(v.dtype, jnp.floating):
            return jnp.asarray(np.asarray(v) + 0.1 * rng.standard_normal(v.shape), dtype)
        return v

    params = nnx.state(layer, nnx.Param)
    nnx.update(layer, jax.tree.map(perturb, params))
    layer.initialize(x, context=ctx)
    # Perturb again after init so ActNorm is not exactly standardising (a harder test).
    nnx.update(layer, jax.tree.map(perturb, nnx.state(layer, nnx.Param)))
    return layer, x, ctx


ids = [e.name for e in REGISTRY]


def _flat(z):
    """Latents as (batch, -1): whole models return a pytree of them (Glow: one per level)."""
    return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree.leaves(z)], 1)


def _round_trip(layer, x, ctx):
    z, ld = layer.forward_and_log_det(x, context=ctx)
    x2, ild = layer.inverse_and_log_det(z, context=ctx)
    return z, ld, x2, ild


@pytest.mark.parametrize("entry", REGISTRY, ids=ids)
def test_round_trip_float32(entry):
    layer, x, ctx = build(entry)
    z, ld, x2, ild = nnx.jit(_round_trip)(layer, x, ctx)
    assert _flat(z).size == x.size and ld.shape == (BATCH,)
    np.testing.assert_allclose(x2, x, atol=1e-4)
    np.testing.assert_allclose(ild, -ld, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("entry", REGISTRY, ids=ids)
def test_jit_matches_eager(entry):
    layer, x, ctx = build(entry)
    eager = _round_trip(layer, x, ctx)
    jitted = nnx.jit(_round_trip)(layer, x, ctx)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("entry", REGISTRY, ids=ids)
def test_log_det_matches_autodiff_jacobian_float64(entry):
    with jax.enable_x64(True):
        layer, x, ctx = build(entry, jnp.float64)
        z, ld, x2, ild = nnx.jit(_round_trip)(layer, x, ctx)
        np.testing.assert_allclose(x2, x, atol=1e-9)
        np.testing.assert_allclose(ild, -ld, atol=1e-9)

        graphdef, state = nnx.split(layer)

        def f(flat):
            model = nnx.merge(graphdef, state)
            y, _ = model.forward_and_log_det(flat.reshape(x.shape), context=ctx)
            return _flat(y).reshape(-1)

        # The Jacobian of the batched map is block diagonal (examples are independent);
        # block i is example i's Jacobian. Reverse mode: the convolutions carry a custom VJP
        # (flows.nn.conv), which forward-mode jacfwd cannot differentiate; same matrix.
        jac = jax.jit(jax.jacrev(f))(x.reshape(-1))
        d = x[0].size
        for i in range(BATCH):
            block = jac[i * d : (i + 1) * d, i * d : (i + 1) * d]
            sign, logabsdet = jnp.linalg.slogdet(block)
            assert sign != 0
            np.testing.assert_allclose(ld[i], logabsdet, rtol=1e-7, atol=1e-7)
