"""Spline-specific checks (the generic round-trip / log-det tests are in the registry):
monotone, identity outside the bound, knots and knot derivatives as parametrised, agreement
with a plain per-bin reference of Durkan et al.'s formula, conditioning, and the MLP pieces."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flows.bijectors.spline import (
    RationalQuadraticSpline,
    rational_quadratic_spline,
    spline_coupling,
    spline_knots,
)
from flows.bijectors.vector import mlp_coupling
from flows.nn.mlp import MLPConditioner

K, BOUND = 6, 2.0

# Jitted once per shape: eager JAX compiles every op separately, which is slow on CPU.
_rqs = jax.jit(rational_quadratic_spline, static_argnames=("bound", "inverse"))
_knots = jax.jit(spline_knots, static_argnames=("bound",))


def _params(seed=0, shape=(3,), scale=1.5):
    return scale * jax.random.normal(jax.random.key(seed), shape + (3 * K - 1,), jnp.float64)


def _reference(x, xs, ys, ds):
    """Durkan et al. (2019) eq. 4, one scalar at a time, no vectorisation tricks."""
    if x < xs[0] or x > xs[-1]:
        return x
    k = min(int(np.searchsorted(xs, x, side="right")) - 1, len(xs) - 2)
    w, h = xs[k + 1] - xs[k], ys[k + 1] - ys[k]
    s, xi = h / w, (x - xs[k]) / w
    num = h * (s * xi**2 + ds[k] * xi * (1 - xi))
    den = s + (ds[k + 1] + ds[k] - 2 * s) * xi * (1 - xi)
    return ys[k] + num / den


def _forward(layer, x, context=None):
    return nnx.jit(lambda m, x, c: m.forward_and_log_det(x, context=c))(layer, x, context)


def test_zero_parameters_are_the_identity():
    layer = RationalQuadraticSpline(3, K, BOUND)
    x = jax.random.normal(jax.random.key(1), (7, 3)) * 2
    y, ld = _forward(layer, x)
    np.testing.assert_allclose(y, x, atol=1e-6)
    np.testing.assert_allclose(ld, 0, atol=1e-5)


def test_monotone_and_onto_the_interval():
    with jax.enable_x64(True):
        p = _params()
        x = jnp.linspace(-BOUND, BOUND, 4001)[:, None] * jnp.ones((1, 3))
        y, ld = _rqs(x, p, bound=BOUND)
        assert np.all(np.diff(np.asarray(y), axis=0) > 0)
        np.testing.assert_allclose(y[0], -BOUND, atol=1e-12)
        np.testing.assert_allclose(y[-1], BOUND, atol=1e-12)
        assert np.all(np.isfinite(ld))


def test_identity_outside_the_bound_with_continuous_slope():
    with jax.enable_x64(True):
        p = _params(seed=2)
        x = jnp.array([[-9.0, -2.5, -BOUND - 1e-9], [BOUND + 1e-9, 3.0, 50.0]])
        x = jnp.repeat(x, 1, axis=0)  # (2, 3)
        y, ld = _rqs(x, p, bound=BOUND)
        np.testing.assert_allclose(y, x, atol=1e-7)
        np.testing.assert_allclose(ld, 0, atol=1e-7)
        # the slope at the bound is 1 from inside too (linear tails, d_0 = d_K = 1)
        t = jnp.array([[-BOUND + 1e-9] * 3, [BOUND - 1e-9] * 3])
        _, ld = _rqs(t, p, bound=BOUND)
        np.testing.assert_allclose(np.exp(ld), 1.0, atol=1e-6)


def test_knots_and_derivatives_match_the_parametrisation():
    with jax.enable_x64(True):
        p = _params(seed=3, shape=(1,))
        xs, ys, ds = (np.asarray(a[0]) for a in _knots(p, bound=BOUND))
        assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) > 0) and np.all(ds > 0)
        y, ld = _rqs(jnp.asarray(xs)[:, None], p, bound=BOUND)
        np.testing.assert_allclose(y[:, 0], ys, atol=1e-12)
        np.testing.assert_allclose(np.exp(ld[:, 0]), ds, rtol=1e-9)


def test_matches_scalar_reference_and_inverts():
    with jax.enable_x64(True):
        p = _params(seed=4, shape=(1,))
        xs, ys, ds = (np.asarray(a[0]) for a in _knots(p, bound=BOUND))
        x = jax.random.uniform(jax.random.key(5), (500, 1), jnp.float64, -2.5, 2.5)
        y, ld = _rqs(x, p, bound=BOUND)
        ref = np.array([_reference(float(v), xs, ys, ds) for v in x[:, 0]])
        np.testing.assert_allclose(y[:, 0], ref, atol=1e-12)
        x2, ild = _rqs(y, p, bound=BOUND, inverse=True)
        np.testing.assert_allclose(x2, x, atol=1e-10)
        np.testing.assert_allclose(ild, -ld, atol=1e-9)


def test_context_selects_a_spline_and_starts_unconditional():
    layer = RationalQuadraticSpline(1, K, 0.5, context_features=2, rngs=nnx.Rngs(0))
    x = jnp.full((2, 1), 0.1)
    ctx = jnp.eye(2)
    y0, _ = _forward(layer, x, ctx)
    np.testing.assert_allclose(y0, x, atol=1e-6)  # zero-initialised context map
    w = layer.context_proj.linear.kernel
    w[...] = jax.random.normal(jax.random.key(1), w.shape)
    y, _ = _forward(layer, x, ctx)
    assert abs(float(y[0, 0] - y[1, 0])) > 1e-3
    with pytest.raises(ValueError):
        layer.forward_and_log_det(x)


def test_spline_coupling_on_images_and_vectors():
    r = nnx.Rngs(0)
    img = spline_coupling(4, 8, num_segments=4, network="conv", rngs=r)
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
    z, ld = _forward(img, x)
    assert z.shape == x.shape and ld.shape == (2,)
    np.testing.assert_allclose(z, x, atol=1e-6)  # zero-initialised conditioner
    vec = mlp_coupling("spline", 3, 8, num_segments=4, bound=1.0, rngs=r)
    z, ld = _forward(vec, jnp.ones((5, 3)))
    assert ld.shape == (5,)
    with pytest.raises(ValueError):
        mlp_coupling("nope", 3, 8, rngs=r)
    with pytest.raises(ValueError):
        mlp_coupling("affine", 3, 8, num_segments=4, rngs=r)


def test_mlp_conditioner_zero_output_and_context():
    net = MLPConditioner(2, 5, 8, 3, context_features=4, rngs=nnx.Rngs(0))
    out = nnx.jit(lambda m, x, c: m(x, c))(net, jnp.ones((3, 2)), jnp.ones((3, 4)))
    assert out.shape == (3, 5)
    np.testing.assert_allclose(out, 0)
    assert len(net.hidden) == 3
    with pytest.raises(ValueError):
        net(jnp.ones((3, 2)))
