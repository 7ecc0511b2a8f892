"""TarFlow (flows/models/tarflow.py): the cached token-by-token inverse, guidance, one compiled
sampling program, bad configs, and a conditional smoke run through the real training loop.

The generic bijector tests (round trip, float64 log-det against the autodiff Jacobian, jit)
run on the registry entries ``tarflow_block_cond``, ``tarflow_model`` and
``tarflow_model_cond`` (flows/testing/bijector_registry.py); the unconditional ``:smoke`` variant of
every TarFlow config trains in tests/test_user_paths.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tarflow_digits
from flows.bijectors import Patchify
from flows.errors import ConfigError
from flows.models import build_model, get_family, sample_compiled
from flows.models.registry import describe_model
from flows.models.tarflow import (
    TarFlow,
    TarFlowBlock,
    guidance_weights,
    guided_shift_and_log_scale,
)
from flows.testing.bijector_registry import perturb_params
from flows.train.loop import train_and_evaluate
from flows.train.restore import load_run

SHAPE = (4, 4, 1)


def _perturbed(module, seed=0, scale=0.2):
    """Every float parameter plus noise: the zero-initialised outputs become non-zero."""
    return perturb_params(module, np.random.default_rng(seed), scale)


def _model(num_classes=3, schedule="constant", num_blocks=3):
    return _perturbed(
        TarFlow(
            SHAPE,
            patch_size=2,
            width=8,
            num_blocks=num_blocks,
            layers_per_block=1,
            num_heads=2,
            num_classes=num_classes,
            guidance_schedule=schedule,
            rngs=nnx.Rngs(0),
        )
    )


def test_patchify_round_trip_and_token_layout():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    patchify = Patchify((4, 6, 3), 2)
    tokens = patchify.forward(x)
    assert tokens.shape == (2, 6, 12)
    np.testing.assert_array_equal(tokens[:, 1], x[:, 0:2, 2:4].reshape(2, 12))  # row-major
    np.testing.assert_array_equal(patchify.inverse(tokens), x)


@pytest.mark.slow
def test_cached_inverse_equals_the_fixed_point_of_the_forward_map():
    """The key/value-cache decoding equals the naive inverse: iterate
    x <- z exp(alpha(x)) + mu(x) with the full (uncached) transformer T times; token t is
    exact after t iterations."""
    block = _perturbed(TarFlowBlock(3, 5, width=8, depth=2, num_heads=2, rngs=nnx.Rngs(1)))
    z = jax.random.normal(jax.random.key(0), (2, 5, 3))

    def naive(z):
        x = z
        for _ in range(z.shape[1]):
            mu, alpha = block._shift_and_log_scale(x, None)
            x = z * jnp.exp(alpha) + mu
        return x, jnp.sum(alpha, axis=(1, 2))

    x_cached, ld_cached = nnx.jit(lambda b, z: b.decode(z, None))(block, z)
    x_naive, ld_naive = jax.jit(naive)(z)
    np.testing.assert_allclose(x_cached, x_naive, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ld_cached, ld_naive, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(x_naive - z))) > 1e-2  # the map is not the identity


@pytest.mark.slow
def test_backprop_modes_give_the_same_gradients():
    """'save_dots' (the default) recomputes the elementwise part of each block in the
    backward pass; the gradients are autodiff's. ('checkpoint' is StepStack's, tested with
    Glow.)"""
    x = jax.random.uniform(jax.random.key(3), (2, *SHAPE))
    grads = []
    for backprop in ("save_dots", "autodiff"):
        model = _perturbed(
            TarFlow(SHAPE, patch_size=2, width=8, num_blocks=2, layers_per_block=1,
                    num_heads=2, backprop=backprop, rngs=nnx.Rngs(0))
        )  # fmt: skip
        graphdef, state = nnx.split(model)

        def loss(state, graphdef=graphdef):
            return jnp.sum(nnx.merge(graphdef, state).log_prob(x))

        grads.append(jax.jit(jax.grad(loss))(state))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *grads)


@pytest.mark.slow
def test_matmul_impls_give_the_same_gradients_and_lax_has_forward_mode():
    """'gemm' (what 'auto' is on CPU) gives the transformers' row products a hand-written
    VJP; 'lax' is plain autodiff, so jax.jvp works through the model (float64: it equals
    a central difference)."""
    with jax.enable_x64():
        x = jax.random.uniform(jax.random.key(3), (2, *SHAPE), jnp.float64)
        models, grads = {}, []
        for impl in ("gemm", "lax"):
            model = TarFlow(SHAPE, patch_size=2, width=8, num_blocks=2, layers_per_block=1,
                            num_heads=2, matmul_impl=impl, rngs=nnx.Rngs(0))  # fmt: skip
            model = _perturbed(model)
            nnx.update(model, jax.tree.map(lambda v: v.astype(jnp.float64), nnx.state(model)))
            graphdef, state = nnx.split(model)
            models[impl] = model

            def loss(state, graphdef=graphdef):
                return jnp.sum(nnx.merge(graphdef, state).log_prob(x))

            grads.append(jax.grad(loss)(state))
        assert models["gemm"].matmul_impl == "gemm" and models["lax"].matmul_impl == "lax"
        assert TarFlow(SHAPE, width=8, num_heads=2, rngs=nnx.Rngs(0)).matmul_impl == (
            "gemm" if jax.default_backend() == "cpu" else "lax"
        )
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), *grads)
        v = jax.random.normal(jax.random.key(4), x.shape, jnp.float64)
        _, tangent = jax.jvp(models["lax"].log_prob, (x,), (v,))
        eps = 1e-6
        central = models["lax"].log_prob(x + eps * v) - models["lax"].log_prob(x - eps * v)
        np.testing.assert_allclose(tangent, central / (2 * eps), rtol=1e-6)
        with pytest.raises(TypeError, match="custom_vjp"):
            jax.jvp(models["gemm"].log_prob, (x,), (v,))


@pytest.mark.slow
def test_guidance():
    """w = 0 is the plain inverse; w > 0 changes the samples; with the label context equal to
    the null context both branches agree, so any w gives the plain inverse again. (The weight
    is traced: one compiled program for every w.)"""
    model = _model()
    z = model.sample_latents(jax.random.key(2), 4)
    labels = model.context_features(jnp.array([0, 1, 2, 1]))
    null = model.null_context(4)
    guided = nnx.jit(lambda m, z, c, w: m.guided_inverse(z, context=c, guidance=w))
    plain = nnx.jit(lambda m, z, c: m.inverse(z, context=c))
    x = plain(model, z, labels)
    # (the guided loop runs a batch of 2B: matrix products may round differently)
    np.testing.assert_allclose(guided(model, z, labels, 0.0), x, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(guided(model, z, labels, 2.0) - x))) > 1e-2
    np.testing.assert_allclose(guided(model, z, null, 3.0), plain(model, z, null), atol=1e-5)


def test_guidance_targets_and_the_mean_null_label():
    """``guidance_on`` extrapolates mu, alpha or both; ``null_label='mean'`` turns the
    all-zero context into uniform class weights and leaves labels one-hot."""
    mu, alpha = jnp.array([[1.0], [3.0]]), jnp.array([[2.0], [5.0]])  # rows: cond, null
    expected = {"both": (0.0, 0.5), "shift": (0.0, 2.0), "log_scale": (1.0, 0.5)}
    for on, (m, a) in expected.items():
        got = guided_shift_and_log_scale(mu, alpha, 1, 0.5, on)
        np.testing.assert_allclose([float(got[0][0, 0]), float(got[1][0, 0])], [m, a])
    model = TarFlow(SHAPE, 3, width=8, num_blocks=1, null_label="mean", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(model.context_features(model.null_context(2)), 1 / 3)
    np.testing.assert_array_equal(model.context_features(jnp.array([2])), [[0, 0, 1]])


def test_guidance_weights_schedules():
    np.testing.assert_allclose(guidance_weights(2.0, 5, "constant"), [2, 2, 2, 2])
    np.testing.assert_allclose(guidance_weights(2.0, 5, "linear"), [0.5, 1.0, 1.5, 2.0])


def test_sampling_is_one_program_with_a_loop_over_tokens_inside_the_scan_over_blocks():
    """The jaxpr of guided sampling holds one scan over the blocks whose body holds the loop
    over the T - 1 decoded tokens as a lax loop (a scan, or a while loop), not unrolled."""
    model = _model()
    graphdef, state = nnx.split(model)

    def sample(state, key):
        m = nnx.merge(graphdef, state)
        return m.sample(2, key, context=jnp.arange(2), guidance=2.0)

    jaxpr = jax.make_jaxpr(sample)(state, jax.random.key(0)).jaxpr
    (blocks,) = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    assert blocks.params["length"] == 3 and blocks.params["reverse"]
    inner = [e for e in blocks.params["jaxpr"].jaxpr.eqns if e.primitive.name in ("scan", "while")]
    assert len(inner) == 1
    if inner[0].primitive.name == "scan":
        assert inner[0].params["length"] == model.num_tokens - 1


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"patch_size": 3}, "not divisible by model.patch_size=3"),
        ({"patch_size": 8}, "at least 2 tokens"),
        ({"width": 10, "num_heads": 4}, "width=10 is not divisible by model.num_heads=4"),
        ({"num_blocks": 0}, "num_blocks must be a positive integer"),
        ({"guidance_schedule": "cosine"}, "guidance_schedule must be one of"),
        ({"backprop": "invertible"}, "backprop must be one of"),
        ({"guidance_on": "mu"}, "guidance_on must be one of"),
        ({"null_label": "uniform"}, "null_label must be one of"),
        ({"nvp": 1}, "nvp must be True or False"),
        ({"norm_epsilon": 0.0}, "norm_epsilon must be a finite number > 0"),
        ({"guidance_attention_temperature": float("nan")}, "temperature must be a finite"),
    ],
)
def test_bad_config_is_one_line_config_error(fields, match):
    config = {**get_family("tarflow").config_defaults(), "width": 8, **fields}
    with pytest.raises(ConfigError, match=match) as info:
        build_model(config, (8, 8, 1), 10, rngs=nnx.Rngs(0))
    assert "\n" not in str(info.value)


def test_describe():
    config = tarflow_digits.get_config("cond")
    text = describe_model(config.model.to_dict())
    assert text == "tarflow p2 w128 4x2 h2 cond, label dropout 0.1"
    config.model.nvp = False
    assert describe_model(config.model.to_dict()).startswith("tarflow p2 w128 4x2 h2 vp cond")


@pytest.mark.slow
def test_conditional_smoke_run_trains_and_samples_with_guidance(tmp_path):
    """``tarflow_digits.py:smoke,cond`` (shortened) through the real loop, then guided,
    annealed and denoised sampling of the restored model in one compiled program each."""
    config = tarflow_digits.get_config("smoke,cond,gen,linear")
    config.train.progress = False
    config.train.num_train_steps = 2
    config.train.eval_every = config.train.checkpoint_every = config.train.log_every = 2
    workdir = str(tmp_path / "run")
    record = train_and_evaluate(config, workdir)
    assert record["train_steps"] == 2
    for field in ("bits_per_dim", "marginal_bits_per_dim", "accuracy"):
        assert np.isfinite(record[field]), field
    model, _, _ = load_run(workdir)
    assert isinstance(model, TarFlow) and model.guidance_schedule == "linear"
    x = sample_compiled(model, 4, jax.random.key(0), 1.0, jnp.arange(4), 2.0, True)
    assert x.shape == (4, 8, 8, 1) and bool(jnp.all(jnp.isfinite(x)))
