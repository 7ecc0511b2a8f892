"""Whole-model tests of Glow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flows import Glow
from flows.bijectors import ActNorm, Conv1x1LU, LearnedPrior, conv_coupling
from flows.bijectors.base import Chain
from flows.models import sample_compiled, standard_normal_log_prob


def _perturb(module, scale, seed=0):
    rng = np.random.default_rng(seed)  # numpy noise: no per-shape XLA compilation
    params = nnx.state(module, nnx.Param)
    nnx.update(
        module,
        jax.tree.map(
            lambda v: jnp.asarray(np.asarray(v) + scale * rng.standard_normal(v.shape), v.dtype),
            params,
        ),
    )


def _flat_latents(latents):
    return jnp.concatenate([z.reshape(z.shape[0], -1) for z in latents], axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("conditional", [True])  # the conditional path covers the plain one
def test_glow_log_det_matches_autodiff_jacobian(conditional):
    with jax.enable_x64(True):
        model = Glow(
            (4, 4, 2),
            num_levels=2,
            num_steps=2,
            hidden_channels=8,
            num_classes=3 if conditional else None,
            condition_on="all",
            rngs=nnx.Rngs(0),
        )
        x = jax.random.uniform(jax.random.key(1), (2, 4, 4, 2), jnp.float64)
        labels = jnp.array([0, 2]) if conditional else None
        nnx.jit(lambda m, x, y: m.initialize(x, context=y))(model, x, labels)
        _perturb(model, 0.05)
        latents, log_det = nnx.jit(lambda m, x, y: m.forward_and_log_det(x, context=y))(
            model, x, labels
        )
        inverse = nnx.jit(lambda m, z, y: m.inverse(z, context=y))
        np.testing.assert_allclose(inverse(model, latents, labels), x, atol=1e-10)

        def f(flat, ctx):
            zs, _ = model.forward_and_log_det(flat.reshape(1, 4, 4, 2), context=ctx)
            return _flat_latents(zs)[0]

        jacobian = jax.jit(jax.jacrev(f))  # one compilation for both examples
        for i in range(2):
            ctx = None if labels is None else labels[i : i + 1]
            jac = jacobian(x[i].reshape(-1), ctx)
            assert jac.shape == (32, 32)
            np.testing.assert_allclose(log_det[i], jnp.linalg.slogdet(jac)[1], rtol=1e-8)


@pytest.mark.slow
def test_glow_built_with_x64_runs_float32_images():
    # x64 on: the parameters are float64, the images float32. Each scan's carry (initialize,
    # the invertible forward, the inverse) must start in the steps' dtype, not be promoted by
    # the first step.
    with jax.enable_x64(True):
        model = Glow(
            (4, 4, 1),
            num_levels=2,
            num_steps=2,
            hidden_channels=4,
            num_classes=2,
            condition_on="all",
            backprop="invertible",
            rngs=nnx.Rngs(0),
        )
        assert model.levels[0].steps.steps.bijectors[0].bias.dtype == jnp.float64
        x = jax.random.uniform(jax.random.key(1), (3, 4, 4, 1), jnp.float32)
        labels = jnp.array([0, 1, 1])
        # A one-hot is exact in float32: it must not widen a float32 model under x64.
        assert model.context_features(labels).dtype == jnp.float32
        # Compiled as a whole (eager calls would compile op by op: slow); tracing is where
        # a scan's carry types are checked.
        nnx.jit(lambda m, x, y: m.initialize(x, context=y))(model, x, labels)
        _perturb(model, 0.05)
        forward = nnx.jit(lambda m, x, y: m.forward_and_log_det(x, context=y))
        log_prob = nnx.jit(lambda m, x, y: m.log_prob(x, context=y))
        inverse = nnx.jit(lambda m, z, y: m.inverse(z, context=y))
        latents, log_det = forward(model, x, labels)
        assert log_det.dtype == jnp.float64
        # float32 images are widened exactly: the same numbers as float64 images.
        wide = log_prob(model, x.astype(jnp.float64), labels)
        np.testing.assert_allclose(log_prob(model, x, labels), wide, rtol=1e-12)
        np.testing.assert_allclose(inverse(model, latents, labels), x, atol=1e-10)


@pytest.mark.slow
def test_sample_has_finite_log_prob_and_right_shape():
    model = Glow((8, 8, 1), num_levels=2, num_steps=2, hidden_channels=8, rngs=nnx.Rngs(0))
    images = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1))
    nnx.jit(lambda m, x: m.initialize(x))(model, images)
    x = sample_compiled(model, 6, jax.random.key(1), 0.7)
    assert x.shape == (6, 8, 8, 1)
    assert bool(jnp.all(jnp.isfinite(nnx.jit(lambda m, x: m.log_prob(x))(model, x))))


def test_actnorm_initialize_standardises_per_channel():
    x = 3.0 + 2.5 * jax.random.normal(jax.random.key(0), (64, 4, 4, 3)) * jnp.array([1, 2, 0.5])
    layer = ActNorm(3)
    y = layer.initialize(x)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-3)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), 1.0, atol=1e-3)


@pytest.mark.slow
def test_first_actnorm_of_glow_standardises_its_input():
    model = Glow((8, 8, 1), num_levels=2, num_steps=2, hidden_channels=8, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (128, 8, 8, 1)) ** 2
    model.initialize(x)
    # Level 0, step 0: ActNorm sees the squeezed, shifted input.
    squeezed = model.levels[0].squeeze.forward(model.preprocess.forward(x))
    graphdef, state = nnx.split(model.levels[0].steps.steps)
    first_step = nnx.merge(graphdef, jax.tree.map(lambda v: v[0], state))
    y = first_step.bijectors[0].forward(squeezed)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-3)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), 1.0, atol=1e-3)


@pytest.mark.slow
def test_two_dimensional_flow_density_integrates_to_one():
    # A 2-D flow (one 1x1 "image" with 2 channels) with non-trivial random parameters.
    flow = Chain(
        [
            ActNorm(2),
            Conv1x1LU(2, rngs=nnx.Rngs(1)),
            conv_coupling("affine", 2, 8, rngs=nnx.Rngs(2)),
            Conv1x1LU(2, rngs=nnx.Rngs(3)),
            conv_coupling("affine", 2, 8, rngs=nnx.Rngs(4)),
            LearnedPrior(2, rngs=nnx.Rngs(5)),
        ]
    )
    flow.initialize(0.5 * jax.random.normal(jax.random.key(0), (256, 1, 1, 2)))
    _perturb(flow, 0.3, seed=1)
    n, half = 801, 8.0
    g = jnp.linspace(-half, half, n)
    xx, yy = jnp.meshgrid(g, g, indexing="ij")
    pts = jnp.stack([xx.ravel(), yy.ravel()], -1).reshape(-1, 1, 1, 2)
    z, log_det = jax.jit(lambda p: flow.forward_and_log_det(p))(pts)
    density = jnp.exp(standard_normal_log_prob(z) + log_det)
    mass = float(jnp.sum(density) * (g[1] - g[0]) ** 2)
    assert abs(1.0 - mass) < 1e-2, mass


def test_rejects_indivisible_image_size_and_wrong_shapes():
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*num_levels = 8"):
        Glow((28, 28, 1), num_levels=3, num_steps=1, hidden_channels=4, rngs=nnx.Rngs(0))
    model = Glow((8, 8, 1), num_levels=1, num_steps=1, hidden_channels=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="expected images of shape"):
        model.log_prob(jnp.zeros((2, 8, 8, 3)))


@pytest.mark.slow
def test_spline_glow_starts_as_the_additive_glow():
    """A spline coupling's conv net ends in a zero layer, so at init every spline has equal
    bins and unit derivatives: the identity, as the additive coupling ``x2 + 0`` is. Built
    from one seed (same ActNorm, permutations, hidden layers, priors), a spline Glow and an
    additive Glow give the same latents and log|det| after data-dependent init: ActNorm and
    the permutations alone. Moving the spline net's last layer off zero changes them."""
    x = jax.random.uniform(jax.random.key(0), (16, 4, 4, 1))
    labels = jnp.arange(16) % 2

    @nnx.jit
    def init_and_encode(model, x, labels):
        model.initialize(x, context=labels)
        latents, log_det = model.forward_and_log_det(x, context=labels)
        return _flat_latents(latents), log_det

    models, out = {}, {}
    for coupling in ("spline", "additive"):
        models[coupling] = Glow(
            (4, 4, 1),
            num_levels=1,
            num_steps=2,
            hidden_channels=8,
            coupling=coupling,
            num_classes=2,
            condition_on="all",  # the label also enters every coupling network
            rngs=nnx.Rngs(0),
        )
        out[coupling] = init_and_encode(models[coupling], x, labels)
    for a, b in zip(out["spline"], out["additive"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # The check can fail: the same program (cached), knots no longer at their init.
    net = models["spline"].levels[0].steps.steps.bijectors[2].conditioner
    net.b3[...] = 0.5 * jnp.sin(jnp.arange(net.b3.size, dtype=jnp.float32)).reshape(net.b3.shape)
    _, log_det = init_and_encode(models["spline"], x, labels)
    assert float(jnp.max(jnp.abs(log_det - out["additive"][1]))) > 0.1


def test_spline_coupling_from_the_model_config():
    """``model.coupling='spline'`` with its segments and bound, Glow's conv net with the
    mixed-precision and remat options; bad values are one-line ConfigErrors; a config
    without the spline fields (a workdir written before them) takes their defaults."""
    from configs.glow_digits import get_config
    from flows.bijectors import SplineCoupling
    from flows.errors import ConfigError
    from flows.models import build_model, get_family
    from flows.models.registry import describe_model
    from flows.nn.conditioners import ConvConditioner

    config = get_config("smoke")  # L=1, K=2: the level sees (4, 4, 4)
    config.model.update(
        coupling="spline",
        spline_num_segments=5,
        spline_bound=2.5,
        compute_dtype="bfloat16",
        remat_coupling_nets=True,
        conditional=True,
        condition_on="all",
    )

    def build(model_config):  # shapes only: nothing is compiled or run
        return nnx.eval_shape(lambda: build_model(model_config, (8, 8, 1), 10, rngs=nnx.Rngs(0)))

    model = build(config.model)
    couplings = [n for _, n in nnx.iter_graph(model) if isinstance(n, SplineCoupling)]
    assert len(couplings) == 1  # the K steps are one stacked module
    (coupling,) = couplings
    assert (coupling.num_segments, coupling.bound, coupling.split) == (5, 2.5, 2)
    net = coupling.conditioner
    assert isinstance(net, ConvConditioner) and net.context_proj is not None
    assert (net.compute_dtype, net.remat) == ("bfloat16", True)
    # K = 2 stacked steps; 2 transformed channels x (3 * 5 - 1) knot parameters each.
    assert net.w3.shape == (2, 3, 3, config.model.hidden_channels, 2 * 14)
    assert describe_model(config.model.to_dict()).startswith("L=1 K=2 h=16 spline(5,B=2.5)")

    for key, value, match in [
        ("coupling", "splines", r"unknown coupling 'splines'; choose one of \['additive', "),
        ("spline_num_segments", 0, "spline_num_segments must be in 1..999, got 0"),
        ("spline_bound", -1.0, "spline_bound must be a positive number"),
    ]:
        bad = config.model.to_dict() | {key: value}
        with pytest.raises(ConfigError, match=match):
            build(bad)

    old = {k: v for k, v in get_config("smoke").model.to_dict().items() if "spline" not in k}
    defaults = get_family("glow").config_defaults()
    assert (defaults["spline_num_segments"], defaults["spline_bound"]) == (8, 3.0)
    assert not [n for _, n in nnx.iter_graph(build(old)) if isinstance(n, SplineCoupling)]
    assert describe_model(old).startswith("L=1 K=2 h=16 affine conv1x1_lu")


@pytest.mark.slow
def test_jvp_through_lax_glow_matches_central_difference_float64():
    """With ``conv_impl='lax'`` forward-mode autodiff runs through the whole model (the GEMM
    path's custom VJP has no JVP): ``jax.jvp`` of (latents, log p(x)) equals a central
    finite difference in float64 to 1e-6 (relative)."""
    with jax.enable_x64(True):
        model = Glow(
            (4, 4, 1),
            num_levels=2,
            num_steps=1,
            hidden_channels=6,
            conv_impl="lax",
            rngs=nnx.Rngs(0),
        )
        assert model.conv_impl == "lax"
        x = jax.random.uniform(jax.random.key(1), (2, 4, 4, 1), jnp.float64)
        _perturb(model, 0.1)  # every network and prior off its zero initialisation
        graphdef, state = nnx.split(model)

        def f(x):
            m = nnx.merge(graphdef, state)
            latents, _ = m.forward_and_log_det(x)
            return jnp.concatenate([_flat_latents(latents), m.log_prob(x)[:, None]], axis=1)

        v = jax.random.normal(jax.random.key(2), x.shape, jnp.float64)
        eps = 1e-5

        @jax.jit
        def both(x, v):
            _, tangent = jax.jvp(f, (x,), (v,))
            return tangent, (f(x + eps * v) - f(x - eps * v)) / (2 * eps)

        tangent, fd = both(x, v)
        assert float(jnp.linalg.norm(tangent[:, -1])) > 1e-3  # log p(x) does move
        error = float(jnp.linalg.norm(tangent - fd) / jnp.linalg.norm(tangent))
        print(f"jvp vs central difference: relative error {error:.1e}")
        assert error < 1e-6, error
