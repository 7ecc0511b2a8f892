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
from flows.models import (
    DensityModel,
    build_model,
    get_family,
    glow,
    model_families,
    register_model,
    tarflow,
)
from flows.models.registry import COMMON_FIELDS, describe_model, unregister_model
from flows.models.steps import BACKPROP
from flows.train.loop import train_and_evaluate
from flows.train.restore import load_run


class DiagonalGaussian(DensityModel):
    """A throwaway family: ``z = (x - mu) * exp(-log_sigma)`` per dimension (one mean and
    scale per pixel and, when conditional, per class); log|det| = -sum log_sigma."""

    def __init__(
        self, image_shape, num_classes=None, *, init_log_sigma: float = -1.0, rngs: nnx.Rngs
    ):
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
    register_model("diag_gaussian")(DiagonalGaussian)
    yield "diag_gaussian"
    unregister_model("diag_gaussian")


class ShiftedGaussian(DiagonalGaussian):
    """A family with a field whose default is None (its type from the annotation)."""

    def __init__(
        self,
        image_shape,
        num_classes=None,
        *,
        init_log_sigma: float = -0.5,
        shift: float | None = None,
        rngs: nnx.Rngs,
    ):
        super().__init__(image_shape, num_classes, init_log_sigma=init_log_sigma, rngs=rngs)
        self.shift = shift


class WiderGaussian(ShiftedGaussian):
    """ShiftedGaussian with one more keyword-only parameter: ``width``."""

    def __init__(
        self,
        image_shape,
        num_classes=None,
        *,
        init_log_sigma: float = -0.5,
        shift: float | None = None,
        width: int = 3,
        rngs: nnx.Rngs,
    ):
        super().__init__(
            image_shape, num_classes, init_log_sigma=init_log_sigma, shift=shift, rngs=rngs
        )
        self.width = width


@pytest.fixture
def throwaway_families():
    names = {"shifted_gaussian": ShiftedGaussian, "wider_gaussian": WiderGaussian}
    for name, model_class in names.items():
        assert register_model(name)(model_class) is model_class
    yield names
    for name in names:
        unregister_model(name)


def test_a_family_gets_its_config_fields_from_its_constructor(throwaway_families):
    shifted, wider = get_family("shifted_gaussian"), get_family("wider_gaussian")
    assert shifted.model_class is ShiftedGaussian
    assert shifted.defaults == {"init_log_sigma": -0.5, "shift": None}
    assert shifted.optional_types == {"shift": float}
    assert shifted.config_defaults() == {
        **COMMON_FIELDS,
        "name": "shifted_gaussian",
        "init_log_sigma": -0.5,
        "shift": None,
    }
    # One more keyword-only parameter is one more config field, with its default.
    assert wider.defaults == {**shifted.defaults, "width": 3}
    assert wider.optional_types == {"shift": float}

    # configs.base: the None default is a placeholder of the annotated type.
    config = base_config(model="wider_gaussian")
    assert (config.model.init_log_sigma, config.model.shift, config.model.width) == (-0.5, None, 3)
    config.model.shift = 0.25
    with pytest.raises(TypeError):
        config.model.shift = "up"

    # The config's values reach the constructor; the registry passes num_classes and rngs.
    model = build_model(config.model, (4, 4, 1), 10, rngs=nnx.Rngs(0))
    assert isinstance(model, WiderGaussian) and model.num_classes is None
    assert (model.shift, model.width) == (0.25, 3)
    np.testing.assert_array_equal(model.log_sigma[...], np.full((1, 4, 4, 1), -0.5))
    model = build_model(
        {"name": "wider_gaussian", "conditional": True, "width": 5}, (4, 4, 1), 3, rngs=nnx.Rngs(0)
    )
    assert (model.num_classes, model.width, model.shift) == (3, 5, None)

    # A field the constructor does not have is refused, naming the family's fields.
    unknown = r"has no field\(s\) \['width'\]; its fields: .*'shift'"
    with pytest.raises(ConfigError, match=unknown):
        build_model({"name": "shifted_gaussian", "width": 5}, (4, 4, 1), 10, rngs=nnx.Rngs(0))
    with pytest.raises(AttributeError):
        finalize(base_config(model="shifted_gaussian")).model.width = 5

    # describe_model without a describe_config of the family's: its name and changed fields.
    text = describe_model({"name": "wider_gaussian", "width": 5, "shift": None})
    assert text == "wider_gaussian width=5"


def test_the_constructor_rule_is_enforced_at_registration():
    class NoDefault(DiagonalGaussian):
        def __init__(self, image_shape, num_classes=None, *, depth: int, rngs: nnx.Rngs):
            super().__init__(image_shape, num_classes, rngs=rngs)

    class Untyped(DiagonalGaussian):
        def __init__(self, image_shape, num_classes=None, *, scale=None, rngs: nnx.Rngs):
            super().__init__(image_shape, num_classes, rngs=rngs)

    class Clash(DiagonalGaussian):
        def __init__(self, image_shape, num_classes=None, *, noise_sigma=0.0, rngs: nnx.Rngs):
            super().__init__(image_shape, num_classes, rngs=rngs)

    class Unconditional(DiagonalGaussian):
        def __init__(self, image_shape, *, rngs: nnx.Rngs):
            super().__init__(image_shape, None, rngs=rngs)

    with pytest.raises(TypeError, match="'depth' is a config field and needs a default"):
        register_model("no_default")(NoDefault)
    with pytest.raises(TypeError, match="'scale' defaults to None: annotate it"):
        register_model("untyped")(Untyped)
    with pytest.raises(ValueError, match=r"redefines common fields \['noise_sigma'\]"):
        register_model("clash")(Clash)
    with pytest.raises(TypeError, match=r"positional parameters are \['image_shape'\]"):
        register_model("no_classes")(Unconditional)
    with pytest.raises(TypeError, match="decorates a DensityModel subclass"):
        register_model("not_a_model")(nnx.Linear)
    assert not {"no_default", "untyped", "clash", "no_classes", "not_a_model"} & set(
        model_families()
    )


@pytest.mark.parametrize("name", ["glow", "tarflow"])
def test_backprop_is_one_vocabulary(name):
    """Every family's backprop names are names of steps.BACKPROP; the others are refused
    by one check, a one-line ConfigError naming the family's."""
    supported = {"glow": glow.BACKPROP_MODES, "tarflow": tarflow.BACKPROP_MODES}[name]
    assert set(supported) < set(BACKPROP)
    assert get_family(name).defaults["backprop"] == supported[0]
    for backprop in [*(b for b in BACKPROP if b not in supported), "remat", True]:
        fields = {"name": name, "backprop": backprop}
        with pytest.raises(ConfigError) as info:
            build_model(fields, (8, 8, 1), 10, rngs=nnx.Rngs(0))
        assert str(info.value) == (
            f"model.backprop must be one of {list(supported)} for "
            f"{get_family(name).model_class.__name__}, got {backprop!r}"
        )


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


@pytest.mark.slow
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


@pytest.mark.slow
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
