"""Variational dequantization (flows.bijectors.dequantizer): the bound it trains and reports.

The dequantizer's flow itself (round trip, log-det against the autodiff Jacobian in float64)
is an entry of flows/testing/bijector_registry.py; a family trained with it through the loop, with
evaluation and restore, is in tests/test_registry.py; configs/glow_digits_vardeq.py:smoke
trains in tests/test_user_paths.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import glow_digits
from flows.bijectors.dequantizer import (
    UniformDequantizer,
    VariationalDequantizer,
    image_context,
)
from flows.data import ImageData
from flows.errors import ConfigError
from flows.evaluation import evaluate_bits_per_dim
from flows.likelihood import quantize
from flows.models import build_model
from flows.train.objectives import density_loss

SHAPE, BINS = (8, 8, 1), 17


def _variational_glow(**fields):
    config = glow_digits.get_config("smoke").model
    config.dequantization = "variational"
    config.update(num_steps=1, dequantizer_hidden_channels=8, dequantizer_steps=2, **fields)
    return build_model(config, SHAPE, 10, rngs=nnx.Rngs(0))  # (ActNorm not initialised)


def _images(n=16, seed=0):
    return jax.random.randint(jax.random.key(seed), (n, *SHAPE), 0, BINS)


def _with_uniform(model):
    """The same model with q fixed to the uniform."""
    graphdef, state = nnx.split(model)
    twin = nnx.merge(graphdef, state)
    twin.dequantizer = UniformDequantizer()
    return twin


def _perturb_dequantizer(model, scale=0.3, seed=1):
    rng = np.random.default_rng(seed)
    params = nnx.state(model.dequantizer, nnx.Param)
    bump = lambda a: a + scale * rng.standard_normal(a.shape).astype(a.dtype)  # noqa: E731
    nnx.update(model.dequantizer, jax.tree.map(bump, params))


@pytest.mark.slow
def test_the_objective_with_a_fresh_variational_dequantizer_is_the_uniform_bound():
    """Zero-initialised couplings make g_v the identity: q = U[0, 1)^D and log q = 0 (float64
    noise: to 1e-12), so the training loss, whose noise is float32, equals the uniform-
    dequantization loss to float32 rounding."""
    with jax.enable_x64(True):
        model = _variational_glow()
        images, noise = _images(), jax.random.uniform(jax.random.key(2), (16, *SHAPE), jnp.float64)
        flow = nnx.jit(lambda d, e, c: d.forward_and_log_det(e, context=c))
        u, log_det = flow(model.dequantizer, noise, image_context(images, BINS, jnp.float64))
        assert float(jnp.max(jnp.abs(u - noise))) < 1e-12
        assert float(jnp.max(jnp.abs(log_det))) < 1e-12
    model = _variational_glow()
    batch = {"image": _images(), "label": jnp.zeros((16,), jnp.int32)}
    loss_fn, key = nnx.jit(density_loss(BINS)), jax.random.key(3)
    (loss_v, metrics_v), (loss_u, metrics_u) = (
        loss_fn(m, batch, key) for m in (model, _with_uniform(model))
    )
    assert abs(float(loss_v) - float(loss_u)) < 1e-6 * abs(float(loss_u))
    assert abs(float(metrics_v["dequant_entropy_bits"])) < 1e-6
    assert "dequant_entropy_bits" not in metrics_u


@pytest.mark.slow
def test_evaluation_names_the_dequantization_and_equals_uniform_at_init():
    model = _variational_glow()
    data = ImageData(
        np.asarray(_images(24, seed=2), np.uint8), np.zeros(24, np.int32), BINS, 1, "t"
    )
    args = dict(batch_size=10, key=jax.random.key(4), num_samples=3)
    rec_v = evaluate_bits_per_dim(model, data, **args)
    rec_u = evaluate_bits_per_dim(_with_uniform(model), data, **args)
    assert (rec_v["dequantization"], rec_u["dequantization"]) == ("variational", "uniform")
    assert rec_v["bound"] == rec_u["bound"] == "importance-weighted bound (k=3)"
    np.testing.assert_allclose(rec_v["bits_per_dim"], rec_u["bits_per_dim"], atol=2e-5)


def test_a_trained_dequantizer_keeps_every_value_in_its_cell():
    """Whatever the parameters, g_v maps the unit cube into itself: x = (v + u)/K stays in
    v's cell (quantizes back to v) and log q is finite; and q is no longer the uniform."""
    model = _variational_glow()
    _perturb_dequantizer(model)
    images = _images(64, seed=7)
    noise = jax.random.uniform(jax.random.key(8), images.shape)
    x, log_q = nnx.jit(lambda m, v, e: m.dequantize(v, e, BINS))(model, images, noise)
    np.testing.assert_array_equal(quantize(x, BINS), images)
    assert np.all(np.isfinite(log_q)) and float(jnp.max(jnp.abs(log_q))) > 0.1


@pytest.mark.slow
def test_the_loss_trains_the_dequantizer():
    model = _variational_glow()
    batch = {"image": _images(), "label": jnp.zeros((16,), jnp.int32)}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        return density_loss(BINS)(nnx.merge(graphdef, params, rest), batch, jax.random.key(3))[0]

    grads = jax.jit(jax.grad(loss))(params)["dequantizer"]
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert max(norms) > 1e-4  # the zero-initialised last layers get a gradient


def test_bad_dequantization_settings_are_config_errors():
    config = glow_digits.get_config("smoke").model
    config.dequantization = "gaussian"
    with pytest.raises(ConfigError, match="unknown dequantization 'gaussian'; choose one of"):
        build_model(config, SHAPE, 10, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="even image height and width, got 7x8"):
        VariationalDequantizer((7, 8, 1), rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="dequantizer_steps must be at least 1"):
        VariationalDequantizer(SHAPE, num_steps=0, rngs=nnx.Rngs(0))
