"""Generic tests, run for every entry of the bijector registry
(``flows.testing.bijector_registry``)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flows.testing.bijector_registry import (
    BATCH,
    JIT_EAGER_ATOL,
    JIT_EAGER_RTOL,
    LOG_DET_ATOL,
    LOG_DET_RTOL,
    REGISTRY,
    ROUND_TRIP_ATOL,
    build,
    round_trip,
)

ids = [e.name for e in REGISTRY]


def _flat(z):
    """Latents as (batch, -1): whole models return a pytree of them (Glow: one per level)."""
    return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree.leaves(z)], 1)


@functools.cache
def _jitted_round_trip(entry):
    """``(layer, x, ctx, (z, ld, x2, ild))``: ``build(entry)`` in float32 and its jitted round
    trip, made once per entry for the two float32 tests (building is most of their time:
    each eager initialiser and data-dependent init is compiled by itself)."""
    layer, x, ctx = build(entry)
    return layer, x, ctx, nnx.jit(round_trip)(layer, x, ctx)


@pytest.mark.parametrize("entry", REGISTRY, ids=ids)
def test_round_trip_float32(entry):
    _, x, _, (z, ld, x2, ild) = _jitted_round_trip(entry)
    assert _flat(z).size == x.size and ld.shape == (BATCH,)
    np.testing.assert_allclose(x2, x, atol=ROUND_TRIP_ATOL)
    np.testing.assert_allclose(ild, -ld, rtol=LOG_DET_RTOL, atol=LOG_DET_ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("entry", REGISTRY, ids=ids)
def test_jit_matches_eager(entry):
    layer, x, ctx, jitted = _jitted_round_trip(entry)
    eager = round_trip(layer, x, ctx)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=JIT_EAGER_RTOL, atol=JIT_EAGER_ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("entry", REGISTRY, ids=ids)
def test_log_det_matches_autodiff_jacobian_float64(entry):
    with jax.enable_x64(True):
        layer, x, ctx = build(entry, jnp.float64)
        z, ld, x2, ild = nnx.jit(round_trip)(layer, x, ctx)
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
        # The blocks' log-determinants in NumPy (LAPACK's LU, as jnp.linalg.slogdet): eager
        # jnp slicing would compile a program per block.
        jac = np.asarray(jax.jit(jax.jacrev(f))(x.reshape(-1)))
        d = x[0].size
        for i in range(BATCH):
            block = jac[i * d : (i + 1) * d, i * d : (i + 1) * d]
            sign, logabsdet = np.linalg.slogdet(block)
            assert sign != 0
            tol = entry.jacobian_rtol
            np.testing.assert_allclose(np.asarray(ld)[i], logabsdet, rtol=tol, atol=tol)
