"""Invertible and checkpointed backprop give the gradients of plain autodiff.

``flows.models.invertible_backprop``, ``StepStack(backprop=...)``, ``Glow(backprop=...)``.
In float64 the inverse reconstructs every step's input to ~1e-15, so the gradients agree to
~1e-10; in float32 within the round trip's rounding. Gradients are taken w.r.t. the input,
every parameter and the context, through a loss that uses both the output and the log-det.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flows.models.glow import Glow
from flows.models.steps import StepStack, glow_step

BATCH = 2
MODES = ("autodiff", "checkpoint", "invertible")


def _with_backprop(module, backprop):
    """A copy of ``module`` (same parameters) whose step stacks use ``backprop``."""
    module = nnx.merge(*nnx.split(module))
    for _, node in nnx.iter_graph(module):
        if isinstance(node, StepStack):
            node.backprop = backprop
    return module


@jax.jit
def _perturbed(state):
    """Every float leaf plus a fixed pattern of size ~0.1 (no RNG: cheap to compile)."""
    leaves, treedef = jax.tree.flatten(state)
    out = [
        v + 0.1 * jnp.sin(0.7 * jnp.arange(v.size, dtype=v.dtype).reshape(v.shape) + i)
        for i, v in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, out)


def _perturb(module, dtype):
    """Cast float state to dtype and perturb every parameter (zero-init layers included)."""

    def cast(v):
        return v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v

    nnx.update(module, jax.tree.map(cast, nnx.state(module)))
    nnx.update(module, _perturbed(nnx.state(module, nnx.Param)))


@nnx.jit
def _initialize(module, x, context):
    module.initialize(x, context=context)


def _stack(
    backprop="autodiff", *, permutation="conv1x1_lu", coupling="affine", context=None, **spline
):
    return StepStack(
        lambda r: glow_step(
            4,
            8,
            coupling=coupling,
            permutation=permutation,
            context_features=context,
            rngs=r,
            **spline,
        ),
        3,
        rngs=nnx.Rngs(0),
        backprop=backprop,
    )


def _stack_grads(dtype, modes=MODES, **kw):
    """{mode: gradients of a loss of (output, log-det) w.r.t. (params, x, context)}."""
    context = kw.get("context")
    stack = _stack(**kw)
    _perturb(stack, dtype)
    kx, kc, kr, ks = jax.random.split(jax.random.key(2), 4)
    x = jax.random.normal(kx, (BATCH, 3, 3, 4), dtype)
    ctx = None if context is None else jax.random.normal(kc, (BATCH, context), dtype)
    r = jax.random.normal(kr, x.shape, dtype)
    s = jax.random.normal(ks, (BATCH,), dtype)
    _initialize(stack, x, ctx)
    out = {}
    for mode in modes:
        graphdef, params, rest = nnx.split(_with_backprop(stack, mode), nnx.Param, ...)

        def loss(params, x, ctx, graphdef=graphdef, rest=rest):
            y, log_det = nnx.merge(graphdef, params, rest).forward_and_log_det(x, context=ctx)
            return jnp.sum(jnp.tanh(y) * r) + jnp.sum(log_det * s)

        out[mode] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, x, ctx)
    return out


def _assert_trees_close(a, b, rtol, atol):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for u, v in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


CASES = [
    dict(permutation="conv1x1_lu", coupling="affine", context=3),
    dict(permutation="shuffle", coupling="additive", context=2),
]
CASE_IDS = ["lu_affine_ctx", "shuffle_additive_ctx"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_step_stack_gradients_equal_autodiff_float64(case):
    with jax.enable_x64(True):
        out = _stack_grads(jnp.float64, **case)
        v_ref, g_ref = out["autodiff"]
        for mode in ("checkpoint", "invertible"):
            v, g = out[mode]
            np.testing.assert_allclose(v, v_ref, rtol=1e-12)
            _assert_trees_close(g, g_ref, rtol=1e-9, atol=1e-11)


@pytest.mark.slow
def test_spline_step_stack_invertible_gradients_equal_autodiff_float64():
    """Glow's spline coupling: its inverse solves a quadratic per element, and the inputs
    (unit scale after ActNorm, bound 1.5) fall both on the spline and in its identity tails;
    each step's input is reconstructed well enough for autodiff's gradients."""
    with jax.enable_x64(True):
        out = _stack_grads(
            jnp.float64,
            modes=("autodiff", "invertible"),
            permutation="reverse",
            coupling="spline",
            spline_num_segments=3,
            spline_bound=1.5,
        )
        (v_ref, g_ref), (v, g) = out["autodiff"], out["invertible"]
        np.testing.assert_allclose(v, v_ref, rtol=1e-12)
        _assert_trees_close(g, g_ref, rtol=1e-9, atol=1e-11)


@pytest.mark.slow
def test_step_stack_gradients_equal_autodiff_float32():
    out = _stack_grads(jnp.float32, modes=("autodiff", "invertible"), **CASES[0])
    _assert_trees_close(out["invertible"][1], out["autodiff"][1], rtol=2e-4, atol=2e-5)


@pytest.mark.slow
def test_invertible_jacobian_equals_autodiff_float64():
    """The full input Jacobian (every output cotangent) agrees, not just one projection."""
    with jax.enable_x64(True):
        stack = _stack()
        _perturb(stack, jnp.float64)
        x = jax.random.normal(jax.random.key(4), (BATCH, 2, 2, 4), jnp.float64)
        _initialize(stack, x, None)
        jacs = []
        for mode in ("autodiff", "invertible"):
            graphdef, state = nnx.split(_with_backprop(stack, mode))

            def f(flat, graphdef=graphdef, state=state, shape=x.shape):
                return nnx.merge(graphdef, state).forward(flat.reshape(shape)).reshape(-1)

            jacs.append(jax.jit(jax.jacrev(f))(x.reshape(-1)))
        np.testing.assert_allclose(jacs[1], jacs[0], rtol=1e-9, atol=1e-12)


def _glow_grads(dtype, modes):
    model = Glow(
        (4, 4, 2),
        num_levels=2,
        num_steps=2,
        hidden_channels=4,
        permutation="conv1x1",
        num_classes=3,
        condition_on="all",
        rngs=nnx.Rngs(0),
    )
    _perturb(model, dtype)
    x = jax.random.uniform(jax.random.key(6), (BATCH, 4, 4, 2), dtype)
    labels = jnp.array([0, 2])
    _initialize(model, x, labels)
    out = {}
    for mode in modes:
        graphdef, params, rest = nnx.split(_with_backprop(model, mode), nnx.Param, ...)

        def loss(params, x, graphdef=graphdef, rest=rest):
            return -jnp.mean(nnx.merge(graphdef, params, rest).log_prob(x, context=labels))

        out[mode] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    return out


@pytest.mark.slow
def test_glow_gradients_equal_autodiff_float64():
    """A whole class-conditional Glow (labels in every coupling and prior), all three modes."""
    with jax.enable_x64(True):
        out = _glow_grads(jnp.float64, MODES)
        v_ref, g_ref = out["autodiff"]
        for mode in ("checkpoint", "invertible"):
            v, g = out[mode]
            np.testing.assert_allclose(v, v_ref, rtol=1e-12)
            _assert_trees_close(g, g_ref, rtol=1e-9, atol=1e-10)


def _train_temp_bytes(backprop, num_steps):
    """XLA's temporary-buffer bytes for the gradient of a K-step stack (compiled, not run)."""
    abstract = nnx.eval_shape(
        lambda: StepStack(
            lambda r: glow_step(4, 16, rngs=r), num_steps, rngs=nnx.Rngs(0), backprop=backprop
        )
    )
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    x = jax.ShapeDtypeStruct((8, 8, 8, 4), jnp.float32)

    def loss(params, rest, x):
        y, log_det = nnx.merge(graphdef, params, rest).forward_and_log_det(x)
        return jnp.sum(y**2) + jnp.sum(log_det)

    analysis = jax.jit(jax.grad(loss)).lower(params, rest, x).compile().memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    return analysis.temp_size_in_bytes


@pytest.mark.slow
def test_invertible_training_memory_does_not_grow_with_depth():
    """XLA's own count of temporary buffers: autodiff keeps every step's activations,
    invertible backprop keeps none, so its training memory is the same for K = 2 and 8."""
    inv2, inv8 = (_train_temp_bytes("invertible", k) for k in (2, 8))
    auto8 = _train_temp_bytes("autodiff", 8)
    assert inv8 <= 1.1 * inv2
    assert auto8 > 2 * inv8


def test_unknown_backprop_is_rejected():
    with pytest.raises(ValueError, match="backprop"):
        _stack("remat")
    with pytest.raises(ValueError, match="backprop"):
        Glow(
            (8, 8, 1), num_levels=1, num_steps=1, hidden_channels=4, backprop=True, rngs=nnx.Rngs(0)
        )
