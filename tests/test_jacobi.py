"""Jacobi inversion of TarFlow's blocks and the sampler choice (flows/models/jacobi.py), and
the guided model's exact density (``DensityModel.guided_log_prob``).

The registry entries ``tarflow_model_cond_guided``, ``tarflow_model_cond_guided_jacobi``
(Jacobi in chunks, mixed with sequential blocks) and ``jet_model_cond_guided``
(flows/testing/bijector_registry.py) run the generic bijector tests: the guided forward
map's log-det against the autodiff Jacobian at w > 0, and that the guided samplers invert
it. The command lines are in tests/test_guided_sampling_cli.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flows.errors import ConfigError
from flows.models import Glow, Jet, TarFlow, make_sampler, sample_and_stats_compiled
from flows.models.jacobi import Sampler, choose_methods, solve_autoregressive
from flows.nn.transformer import Transformer
from flows.testing.bijector_registry import perturb_params

SHAPE = (8, 8, 1)  # patch 2: 16 tokens of 4 values


def _perturbed(module, seed=0, scale=0.1):
    """Every float parameter plus noise: the zero-initialised outputs become non-zero."""
    return perturb_params(module, np.random.default_rng(seed), scale)


@pytest.fixture(scope="module")
def tarflow():
    model = TarFlow(SHAPE, patch_size=2, width=8, num_blocks=3, layers_per_block=1,
                    num_heads=2, num_classes=3, rngs=nnx.Rngs(0))  # fmt: skip
    model.label_dropout = 0.1  # as if trained with it: guidance is allowed
    return _perturbed(model)


@pytest.fixture(scope="module")
def invert():
    """``invert(model, z, labels, sampler, w) -> (x, log|det|, stats)``, compiled once per
    model structure, sampler and w."""
    return nnx.jit(
        lambda m, z, c, s, w: m.inverse_with_sampler(z, context=c, guidance=w, sampler=s),
        static_argnums=(3, 4),
    )


# -- the solver ----------------------------------------------------------------------------


def _linear_predict(c):
    """A toy autoregressive map: token t + 1 has ``mu = c x_t`` and ``alpha = 0``; with z all
    ones, Jacobi update k changes the tokens by at most ``c^k`` (token k, until k = T)."""

    def predict(x_chunk, s, state):
        return c * x_chunk, jnp.zeros_like(x_chunk), state

    return predict


def _linear_inverse(z, c):
    x = [z[:, 0]]
    for t in range(1, z.shape[1]):
        x.append(z[:, t] + c * x[-1])
    return jnp.stack(x, axis=1)


@pytest.mark.parametrize(
    "chunk, tol, max_iters, updates, converged",
    [
        (8, 0.1, None, 4, True),  # changes 0.5, 0.25, 0.125, 0.0625 < 0.1: stops at the tolerance
        (8, 0.0, 2, 2, False),  # stops at the maximum count, not converged
        (8, 0.0, None, 8, True),  # tolerance 0: runs to the chunk's size, where it is exact
        (8, 1e9, None, 1, True),  # a chunk always takes one update
        (3, 0.0, None, 9, True),  # chunks at 0, 3 and 5 (the last overlaps), 3 updates each
        (3, 0.0, 50, 9, True),  # a limit above the chunk's size changes nothing
    ],
)
def test_solver_stops_at_the_tolerance_and_at_the_maximum_count(
    chunk, tol, max_iters, updates, converged
):
    z = jnp.ones((2, 8, 1))
    solve = jax.jit(
        lambda z: solve_autoregressive(
            _linear_predict(0.5), z, (), chunk=chunk, tol=tol, max_iters=max_iters
        )
    )
    x, log_det, n, ok = solve(z)
    assert int(n) == updates and bool(ok) == converged
    np.testing.assert_array_equal(log_det, 0.0)
    exact = _linear_inverse(z, 0.5)
    if converged and tol == 0:
        np.testing.assert_allclose(x, exact, rtol=1e-6)
    else:  # the error after k updates of a chunk is at most the last change (c = 0.5)
        assert float(jnp.max(jnp.abs(x - exact))) <= 0.5**updates + 1e-6


@pytest.mark.slow
def test_decode_chunk_equals_the_full_pass():
    """Chunks of 3 of 7 tokens through the key/value cache give the full causal pass."""
    net = _perturbed(
        Transformer(
            3,
            4,
            num_tokens=7,
            width=8,
            depth=1,
            num_heads=2,
            causal=True,
            context_features=2,
            rngs=nnx.Rngs(1),
        )  # fmt: skip
    )
    x = jax.random.normal(jax.random.key(0), (2, 7, 3))
    ctx = jax.random.normal(jax.random.key(1), (2, 2))

    @nnx.jit
    def chunked(net, x, ctx):
        cache, outs = net.init_cache(2), []
        for s in (0, 3, 4):  # the last chunk overlaps the one before (as the Jacobi solver)
            out, cache = net.decode_chunk(x[:, s : s + 3], s, cache, ctx)
            outs.append(out)
        return jnp.concatenate([outs[0], outs[1][:, :1], outs[2]], 1)

    full = nnx.jit(lambda net, x, ctx: net(x, ctx))(net, x, ctx)
    np.testing.assert_allclose(chunked(net, x, ctx), full, rtol=1e-5, atol=1e-6)


# -- TarFlow: Jacobi equals sequential ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_jacobi_samples_equal_the_sequential_ones(tarflow, invert, guidance):
    """Same latents: the Jacobi inverse (default tolerance; whole blocks, and chunks of 5 of
    the 16 tokens with the middle block sequential) is the sequential one within 1e-3 on the
    [-1, 1] scale, at w = 0 and w > 0, and stops before the exact count of updates."""
    z = tarflow.sample_latents(jax.random.key(2), 4)
    labels = jnp.array([0, 1, 2, 1])
    x_seq, ld_seq, _ = invert(tarflow, z, labels, Sampler("sequential"), guidance)
    reference = tarflow.guided_inverse(z, context=labels, guidance=guidance)
    np.testing.assert_allclose(x_seq, reference, atol=1e-5)  # (guided: a batch of 2B)
    samplers = {
        "jacobi": make_sampler("jacobi"),
        "jacobi chunks": Sampler(("jacobi", "sequential", "jacobi"), chunk=5),
    }
    for name, sampler in samplers.items():
        x, ld, stats = invert(tarflow, z, labels, sampler, guidance)
        assert float(2 * jnp.max(jnp.abs(x - x_seq))) <= 1e-3, name
        np.testing.assert_allclose(ld, ld_seq, rtol=1e-4, atol=1e-3)
        assert bool(jnp.all(stats["converged"])), name
        updates = np.asarray(stats["updates"])
        assert updates.shape == (3,) and updates.dtype == np.int32
        if name == "jacobi":
            assert np.all((updates >= 1) & (updates < 16)), updates
        else:  # 4 chunks of at most 5 updates; the sequential block reports none
            assert updates[1] == 0 and np.all((updates[[0, 2]] >= 4) & (updates[[0, 2]] <= 20))
    if guidance:  # it changes the samples
        assert float(jnp.max(jnp.abs(x_seq - tarflow.inverse(z, context=labels)))) > 1e-2


@pytest.mark.slow
def test_sample_stats_and_auto(tarflow):
    """``sample_and_stats_compiled`` returns each block's Jacobi updates; ``'auto'`` measures
    and names a method for each block, with its reason; a closed-form family has nothing to
    choose and refuses Jacobi."""
    labels = jnp.arange(2) % 3
    sampler = make_sampler("jacobi", tol=1e-4, max_iters=3)
    x, stats = sample_and_stats_compiled(tarflow, 2, jax.random.key(0), 1.0, labels, 1.0,
                                         False, sampler)  # fmt: skip
    assert x.shape == (2, *SHAPE) and bool(jnp.all(jnp.isfinite(x)))
    assert np.asarray(stats["updates"]).tolist() == [3, 3, 3]  # the maximum count
    assert not np.any(np.asarray(stats["converged"]))  # 3 < 16 updates: not converged
    latents = tarflow.sample_latents(jax.random.key(0), 2)
    auto = tarflow.choose_sampler(latents, context=labels, guidance=1.0, sampler=sampler)
    assert len(auto.methods) == 3 and set(auto.methods) <= {"sequential", "jacobi"}
    assert auto.reason.startswith("auto on cpu, batch 2: sequential ") and "block 2:" in auto.reason
    assert auto == Sampler(auto.methods, sampler.tol, sampler.max_iters, sampler.chunk)

    glow = Glow((4, 4, 1), num_levels=1, num_steps=1, hidden_channels=4, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="closed form: the jacobi sampler") as info:
        glow.check_sampler(make_sampler("jacobi"))
    assert "\n" not in str(info.value)
    chosen = glow.choose_sampler(None, sampler=make_sampler("jacobi"))
    assert chosen.methods == "sequential" and "closed form" in chosen.reason


def test_choose_methods_takes_the_faster_per_block():
    methods, reason = choose_methods(0.010, [0.004, 0.011, 0.009], [5, 16, 12],
                                     backend="cpu", batch=1)  # fmt: skip
    assert methods == ("jacobi", "sequential", "jacobi")
    assert reason == (
        "auto on cpu, batch 1: sequential 10 ms per block; block 0: jacobi (jacobi 4 ms, 5 "
        "updates); block 1: sequential (jacobi 11 ms, 16 updates); block 2: jacobi (jacobi 9 "
        "ms, 12 updates)"
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "newton"}, "sampler must be one of"),
        ({"name": "auto"}, "sampler must be one of"),
        ({"tol": float("nan")}, "jacobi_tol must be a finite number >= 0, got nan"),
        ({"tol": -1e-3}, "jacobi_tol must be a finite number >= 0"),
        ({"max_iters": 0}, "jacobi_max_iters must be a positive integer, got 0"),
        ({"chunk": 0}, "jacobi_chunk must be a positive integer, got 0"),
        ({"chunk": 2.5}, "jacobi_chunk must be a positive integer"),
    ],
)
def test_bad_sampler_options_are_one_line_errors(kwargs, match):
    kwargs = {"name": "jacobi", **kwargs}
    with pytest.raises(ConfigError, match=match) as info:
        make_sampler(kwargs.pop("name"), **kwargs)
    assert "\n" not in str(info.value)


def test_a_sampler_names_one_method_per_block():
    assert Sampler("jacobi").block_methods(2) == ("jacobi", "jacobi")
    with pytest.raises(ConfigError, match="names 2 blocks' methods; the model has 3"):
        Sampler(("jacobi", "sequential")).block_methods(3)


# -- the guided model's density ---------------------------------------------------------------


@pytest.mark.slow
def test_guided_density_at_zero_is_the_conditional_density(tarflow):
    """At w = 0 the guided forward map (both branches computed) is the conditional one, and
    ``guided_log_prob`` is ``log_prob``; at w > 0 the density differs (Jet likewise)."""
    jet = _perturbed(
        Jet(
            (4, 4, 1),
            patch_size=2,
            num_couplings=3,
            block_depth=1,
            width=8,
            num_heads=2,
            coupling_pattern="channels,spatial",
            num_classes=3,
            rngs=nnx.Rngs(0),
        )  # fmt: skip
    )

    @nnx.jit
    def densities(model, x, labels):
        return (
            model.forward_and_log_det(x, context=labels),
            model.guided_forward_and_log_det(x, context=labels, guidance=0.0),
            model.log_prob(x, context=labels),
            model.guided_log_prob(x, context=labels, guidance=0.0),
            model.guided_log_prob(x, context=labels, guidance=1.5),
        )

    for model in (jet, tarflow):  # TarFlow last: its class likelihoods below
        x = jax.random.uniform(jax.random.key(1), (3, *model.image_shape), minval=0.02,
                               maxval=0.98)  # fmt: skip
        labels = jnp.array([0, 2, 1])
        (z, ld), (zg, ldg), plain, plain_too, guided = densities(model, x, labels)
        np.testing.assert_allclose(zg, z, atol=1e-5)
        np.testing.assert_allclose(ldg, ld, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(plain_too, plain)
        assert (
            bool(jnp.all(jnp.isfinite(guided))) and float(jnp.max(jnp.abs(guided - plain))) > 1e-2
        )
    # The guided class likelihoods (what evaluate --guidance ranks): p_w(x | y) for every y.
    per_class = nnx.jit(lambda m, x: m.class_log_likelihoods(x, guidance=1.5))(model, x)
    np.testing.assert_allclose(per_class[jnp.arange(3), labels], guided, rtol=1e-5)
