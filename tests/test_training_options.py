"""Options any family takes (``config.model``): label dropout, Gaussian noise augmentation with
one-step denoising, and the guidance checks; tested on a tiny Glow, since none of them is
Glow's own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flows.errors import ConfigError
from flows.models import build_model
from flows.train.objectives import density_loss
from tests import test_jet
from tests.test_conditional import perturb

SHAPE = (4, 4, 1)
NUM_BINS = 17


def _glow(**fields):
    config = {
        "name": "glow",
        "num_levels": 1,
        "num_steps": 1,
        "hidden_channels": 8,
        "condition_on": "all",
        **fields,
    }
    return build_model(config, SHAPE, 3, rngs=nnx.Rngs(0))


def _batch(n=6):
    rng = np.random.default_rng(0)
    return {
        "image": jnp.asarray(rng.integers(0, NUM_BINS, (n, *SHAPE)), jnp.int32),
        "label": jnp.asarray(rng.integers(0, 3, (n,)), jnp.int32),
    }


@nnx.jit
def _loss(model, batch, key):
    return density_loss(NUM_BINS)(model, batch, key)[0]


@nnx.jit
def _loss_with_context(model, batch, key, context):
    """The objective computed by hand: bits/dim of the uniformly dequantized batch, noise
    drawn from ``key`` as ``density_loss`` draws it, under ``context``."""
    x, _ = model.dequantize(batch["image"], jax.random.uniform(key, batch["image"].shape), 17)
    if model.noise_sigma:
        x = x + model.noise_sigma * jax.random.normal(jax.random.fold_in(key, 2), x.shape)
    log_p = model.log_prob(x, context=context)
    return -jnp.mean(log_p) / (x[0].size * jnp.log(2.0)) + jnp.log2(17.0)


@pytest.mark.slow
def test_label_dropout_trains_the_unconditional_branch():
    model = _glow(conditional=True, label_dropout=0.5)
    perturb(model, 0.3, seed=1)
    batch, key = _batch(), jax.random.key(3)
    one_hot = jax.nn.one_hot(batch["label"], 3)
    keep = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, batch["label"].shape)
    expected = _loss_with_context(model, batch, key, one_hot * keep[:, None])
    np.testing.assert_allclose(_loss(model, batch, key), expected, rtol=1e-6)
    assert 0 < int(keep.sum()) < len(keep)  # the draw mixes labelled and unlabelled examples
    # The null context is not the labels: the dropped examples do change the loss.
    assert abs(float(_loss_with_context(model, batch, key, one_hot)) - float(expected)) > 1e-4


def test_noise_sigma_adds_gaussian_noise_to_the_training_inputs():
    model = _glow(noise_sigma=0.05)
    perturb(model, 0.3, seed=1)
    batch, key = _batch(), jax.random.key(4)
    expected = _loss_with_context(model, batch, key, None)
    np.testing.assert_allclose(_loss(model, batch, key), expected, rtol=1e-6)
    model.noise_sigma = 0.0
    assert abs(float(_loss(model, batch, key)) - float(expected)) > 1e-4


def test_denoise_is_one_tweedie_step():
    """At initialisation an additive Glow is an orthogonal map onto N(0, I) after the shift
    to [-0.5, 0.5) (zero-initialised couplings and priors, ActNorm not yet initialised,
    rotations for 1x1 convolutions), so grad log p(x) = -(x - 1/2) and denoising is
    ``x - sigma^2 (x - 1/2)``."""
    sigma = 0.2
    model = _glow(noise_sigma=sigma, coupling="additive")
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (3, *SHAPE)), jnp.float32)
    out = nnx.jit(lambda m, v: m.denoise(v))(model, x)
    np.testing.assert_allclose(out, x - sigma**2 * (x - 0.5), atol=1e-6)


def _jet(**fields):
    """A tiny Jet: a family with guidance."""
    config = {"name": "jet", **test_jet.SMALL, "num_couplings": 1, **fields}
    return build_model(config, test_jet.IMAGE, 3, rngs=nnx.Rngs(0))


def test_guidance_and_denoise_refuse_models_that_cannot_use_them():
    plain = _glow()
    with pytest.raises(ConfigError, match="noise_sigma"):
        plain.denoise(jnp.zeros((1, *SHAPE)))
    # Glow has no guidance: that is what it says, whatever it was trained with.
    for glow in (plain, _glow(conditional=True), _glow(conditional=True, label_dropout=0.1)):
        with pytest.raises(ConfigError, match="^Glow has no classifier-free guidance"):
            glow.check_guidance(2.0)
    with pytest.raises(ConfigError, match="no classifier-free guidance"):
        glow.sample(2, jax.random.key(0), context=jnp.zeros(2, int), guidance=1.0)
    with pytest.raises(ConfigError, match="label-conditioned"):
        _jet().check_guidance(1.0)
    with pytest.raises(ConfigError, match="label_dropout"):
        _jet(conditional=True).check_guidance(2.0)
    with_dropout = _jet(conditional=True, label_dropout=0.1)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="finite number >= 0"):
            with_dropout.check_guidance(bad)
    with_dropout.check_guidance(0.0)
    with_dropout.check_guidance(2.0)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"label_dropout": 0.1}, "needs model.conditional"),
        ({"conditional": True, "label_dropout": 1.0}, r"in \[0, 1\)"),
        ({"noise_sigma": -0.1}, ">= 0"),
    ],
)
def test_bad_training_options_are_one_line_errors(fields, message):
    with pytest.raises(ConfigError, match=message):
        _glow(**fields)
