"""The model registry: a family plugs in with one module (here, this test) and nothing in
the trainer, evaluation or restore code knows which family it runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.base import base_config, finalize
from flows import workdir as wd
from flows.errors import ConfigError
from flows.models import DensityModel, build_model, get_family, model_families, register_model
from flows.models.registry import COMMON_FIELDS, unregister_model
from flows.train.loop import train_and_evaluate
from flows.train.restore import load_run


class DiagonalGaussian(DensityModel):
    """A throwaway family: ``z = (x - mu) * exp(-log_sigma)`` per dimension (one mean and
    scale per pixel and, when conditional, per class); log|det| = -sum log_sigma."""

    def __init__(self, image_shape, num_classes, *, init_log_sigma: float, rngs: nnx.Rngs):
        super().__init__(image_shape, num_classes)
        rows = num_classes or 1
        self.mu = nnx.Param(jnp.zeros((rows, *self.image_shape)))
        self.log_sigma = nnx.Param(jnp.full((rows, *self.image_shape), init_log_sigma))

    def _params(self, context):
        weights = self.context_features(context)
        if weights is None:
            return self.mu[...][0], self.log_sigma[...][0]
        return (
            jnp.einsum("bk,khwc->bhwc", weights, self.mu[...]),
            jnp.einsum("bk,khwc->bhwc", weights, self.log_sigma[...]),
        )

    def initialize(self, x, *, context=None):
        self.check_images(x)
        self.mu[...] = jnp.broadcast_to(jnp.mean(x, axis=0), self.mu.shape)

    def forward_and_log_det(self, x, *, context=None):
        self.check_images(x)
        mu, log_sigma = self._params(context)
        z = (x - mu) * jnp.exp(-log_sigma)
        log_det = -jnp.sum(jnp.broadcast_to(log_sigma, x.shape).reshape(len(x), -1), axis=1)
        return z, log_det

    def inverse_and_log_det(self, z, *, context=None):
        mu, log_sigma = self._params(context)
        x = z * jnp.exp(log_sigma) + mu
        return x, jnp.sum(jnp.broadcast_to(log_sigma, x.shape).reshape(len(x), -1), axis=1)

    def sample_latents(self, key, num, temperature=1.0):
        return temperature * jax.random.normal(key, (num, *self.image_shape))


@pytest.fixture
def diagonal_family():
    @register_model("diag_gaussian", defaults={"init_log_sigma": -1.0})
    def build(cfg, image_shape, num_classes, *, rngs):
        return DiagonalGaussian(
            image_shape, num_classes, init_log_sigma=cfg["init_log_sigma"], rngs=rngs
        )

    yield "diag_gaussian"
    unregister_model("diag_gaussian")


def _smoke_config(model):
    c = base_config(model=model)
    c.data.validation_size = 100
    c.train.batch_size = 32
    c.train.init_batch_size = 64
    c.train.num_train_steps = 30
    c.train.log_every = 10
    c.train.eval_every = 15
    c.train.checkpoint_every = 15
    c.train.num_grid_samples = 4
    c.train.progress = False
    c.optim.lr = 3e-2
    c.optim.warmup_steps = 1
    c.eval.batch_size = 100
    return finalize(c)


@pytest.mark.parametrize("conditional", [False, True])
def test_a_family_registered_in_a_test_trains_through_the_loop(
    diagonal_family, conditional, tmp_path
):
    assert diagonal_family in model_families() and "glow" in model_families()
    config = _smoke_config(diagonal_family)
    config.model.conditional = conditional
    # Any family can have a variational dequantizer (flows.models.registry attaches it).
    config.model.dequantization = "variational" if conditional else "uniform"
    config.model.dequantizer_hidden_channels, config.model.dequantizer_steps = 8, 2
    assert set(config.model.keys()) == set(COMMON_FIELDS) | {"init_log_sigma"}
    record = train_and_evaluate(config, str(tmp_path))
    metrics = wd.read_metrics(str(tmp_path))
    train_bpd = [r["train_bpd"] for r in metrics if "train_bpd" in r]
    assert train_bpd[-1] < train_bpd[0]
    assert [r["step"] for r in metrics if "val_bpd" in r] == [15, 30]
    assert np.isfinite(record["bits_per_dim"]) and record["num_bins"] == 17
    if conditional:
        assert record["conditional"] and np.isfinite(record["marginal_bits_per_dim"])
        assert record["accuracy"] > record["chance_accuracy"]
    model, loaded_config, info = load_run(str(tmp_path))
    assert isinstance(model, DiagonalGaussian) and loaded_config.model.name == diagonal_family
    assert record["dequantization"] == model.dequantizer.kind == config.model.dequantization
    if conditional:  # the dequantizer trained with the model: q moved away from the uniform
        log_q_bits = [r["train_dequant_entropy_bits"] for r in metrics if "train_bpd" in r]
        assert abs(log_q_bits[-1]) > 1e-3, log_q_bits
    assert info["checkpoint_step"] == record["checkpoint_step"] and info["num_bins"] == 17


def test_unknown_family_and_foreign_fields_are_config_errors():
    config = _smoke_config("glow")
    config.model.name = "nosuchflow"
    with pytest.raises(ConfigError, match="unknown model.name 'nosuchflow'; registered: .*glow"):
        build_model(config.model, (8, 8, 1), 10, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="unknown model.name"):
        base_config(model="nosuchflow")
    fields = dict(get_family("glow").config_defaults(), extra_field=1)
    with pytest.raises(ConfigError, match=r"has no field\(s\) \['extra_field'\]"):
        build_model(fields, (8, 8, 1), 10, rngs=nnx.Rngs(0))


def test_validation_and_logging_keep_their_own_schedules(diagonal_family, tmp_path):
    """eval_every=250 with log_every=100 validates at 250, 500, 750, 1000 (it used to run
    only on steps that were also logging steps: 500, 1000)."""
    config = _smoke_config(diagonal_family)
    config.train.update(num_train_steps=1000, log_every=100, eval_every=250, checkpoint_every=500)
    train_and_evaluate(config, str(tmp_path))
    metrics = wd.read_metrics(str(tmp_path))
    assert [r["step"] for r in metrics if "val_bpd" in r] == [250, 500, 750, 1000]
    assert [r["step"] for r in metrics if "train_bpd" in r] == list(range(100, 1001, 100))
    assert [r["step"] for r in metrics] == [
        100,
        200,
        250,
        300,
        400,
        500,
        600,
        700,
        750,
        800,
        900,
        1000,
    ]
