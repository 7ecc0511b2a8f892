"""``compute_dtype`` of the transformer families (TarFlow, Jet): bf16 operands in the networks'
products, float32 everywhere else.

Which products are bf16 (and that the flows' own products stay at HIGHEST in float32) is
checked on the lowered programs in tests/test_precision.py; round trips and log-dets against
the float64 autodiff Jacobian of bf16 models are the registry entries
``tarflow_model_bf16_gemm_cond`` and ``jet_model_bf16`` (flows/testing/bijector_registry.py).
Here: the hand-written VJP against autodiff in bf16, sampling with the same network as the
density, a small bits/dim difference against float32, the resolved choice and its reason
(``'auto'``: Glow's rule, ``flows.nn.backend.resolve_compute_dtype``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flows.errors import ConfigError
from flows.models import build_model
from flows.models.jet import Jet
from flows.models.tarflow import TarFlow
from flows.nn.backend import resolve_compute_dtype
from flows.nn.transformer import Transformer

IMAGE = (8, 8, 1)
TARFLOW = {"patch_size": 2, "width": 16, "num_blocks": 2, "layers_per_block": 1, "num_heads": 2}
JET = {
    "patch_size": 2,
    "num_couplings": 2,
    "block_depth": 1,
    "width": 16,
    "num_heads": 2,
    "coupling_pattern": "channels,spatial",
}


def _perturbed(module, seed=0, scale=0.1):
    """Parameters plus N(0, scale^2) noise (the same for every dtype): the zero-initialised
    output layers act, so the flows are far from the identity."""
    rng = np.random.default_rng(seed)
    params = nnx.state(module, nnx.Param)
    noisy = jax.tree.map(lambda v: v + scale * rng.standard_normal(v.shape, np.float32), params)
    nnx.update(module, noisy)
    return module


def _models(family, **kw):
    """The same parameters with float32 and with bf16 products."""
    make, fields = (TarFlow, TARFLOW) if family == "tarflow" else (Jet, JET)
    return {
        dtype: _perturbed(make(IMAGE, **fields, **kw, compute_dtype=dtype, rngs=nnx.Rngs(0)))
        for dtype in ("float32", "bfloat16")
    }


def _bits_per_dim(model, x):
    return -model.log_prob(x) / (np.prod(IMAGE) * np.log(2)) + 8  # 8-bit data


@pytest.fixture(scope="module")
def images():
    return jax.random.randint(jax.random.key(1), (4, *IMAGE), 0, 256).astype(jnp.float32) / 256


@pytest.mark.slow
@pytest.mark.parametrize("family", ["tarflow", "jet"])
def test_bf16_products_change_bits_per_dim_a_little(family, images):
    """The same parameters, far from the identity: bf16 products move bits/dim by less than
    0.01 (about 1e-4 to 3e-3 here; a trained digits model moved by 2e-4). The round trip of
    bf16 models is the registry's (``*_bf16*`` entries)."""
    models = _models(family)
    bpd = {k: jax.jit(_bits_per_dim, static_argnums=0)(m, images) for k, m in models.items()}
    diff = float(jnp.max(jnp.abs(bpd["bfloat16"] - bpd["float32"])))
    assert 1e-7 < diff < 1e-2, diff  # bf16 is in effect, and close
    model = models["bfloat16"]
    assert (model.compute_dtype, model.compute_dtype_reason) == (
        "bfloat16",
        "bfloat16: as configured",
    )
    assert float(jnp.min(jnp.abs(bpd["float32"] - 8))) > 0.5  # far from the identity


@pytest.mark.slow
def test_gemm_vjp_in_bf16_follows_autodiff_of_the_same_products(images):
    """TarFlow with bf16 products: ``matmul_impl='gemm'`` (the hand-written VJP: input
    gradients from bf16 operands, weight gradients from the widened residual) against
    ``'lax'`` (autodiff of the same mixed products): the same loss, gradients equal to
    bf16 rounding of the input gradients; both near float32's."""
    losses, grads = {}, {}
    for impl in ("gemm", "lax"):
        for dtype, model in _models("tarflow", matmul_impl=impl).items():
            graphdef, state = nnx.split(model)

            def loss(state, graphdef=graphdef):
                return -jnp.mean(nnx.merge(graphdef, state).log_prob(images))

            losses[impl, dtype], grads[impl, dtype] = jax.jit(jax.value_and_grad(loss))(state)
    np.testing.assert_allclose(losses["gemm", "bfloat16"], losses["lax", "bfloat16"], rtol=1e-6)

    def rel(a, b):
        num = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(a, b, strict=True))
        return np.sqrt(num / sum(float(jnp.sum(y**2)) for y in b))

    leaves = {k: jax.tree.leaves(v) for k, v in grads.items()}
    assert rel(leaves["gemm", "float32"], leaves["lax", "float32"]) < 1e-5
    assert rel(leaves["gemm", "bfloat16"], leaves["lax", "bfloat16"]) < 2e-2
    for impl in ("gemm", "lax"):
        assert 1e-5 < rel(leaves[impl, "bfloat16"], leaves[impl, "float32"]) < 5e-2


@pytest.mark.slow
def test_decode_step_runs_the_network_of_the_full_pass():
    """Token by token with the cache, a bf16 transformer's outputs are its full pass's (to
    float32 rounding), and not the float32 network's."""
    nets = {
        dtype: _perturbed(
            Transformer(
                3,
                4,
                num_tokens=5,
                width=8,
                depth=1,
                num_heads=2,
                causal=True,
                compute_dtype=dtype,
                rngs=nnx.Rngs(0),
            ),
            scale=0.3,
        )  # fmt: skip
        for dtype in ("float32", "bfloat16")
    }
    x = jax.random.normal(jax.random.key(0), (2, 5, 3))
    full = {k: net(x) for k, net in nets.items()}
    net, cache, steps = nets["bfloat16"], nets["bfloat16"].init_cache(2), []
    for t in range(5):
        out, cache = net.decode_step(x[:, t : t + 1], jnp.int32(t), cache)
        steps.append(out)
    assert cache[0][0].dtype == jnp.float32  # keys and values stay float32
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full["bfloat16"], atol=1e-5)
    assert float(jnp.max(jnp.abs(full["bfloat16"] - full["float32"]))) > 1e-4


@pytest.mark.parametrize("family", ["tarflow", "jet"])
def test_compute_dtype_field(family):
    fields = TARFLOW if family == "tarflow" else JET
    model = build_model({"name": family, **fields}, IMAGE, None, rngs=nnx.Rngs(0))
    assert (model.compute_dtype, model.compute_dtype_reason) == (
        "float32",
        "float32: as configured",
    )
    auto = build_model(
        {"name": family, **fields, "compute_dtype": "auto"}, IMAGE, None, rngs=nnx.Rngs(0)
    )
    # The rule Glow's 'auto' follows (tests/test_conv.py): bf16 where this machine has it.
    assert (auto.compute_dtype, auto.compute_dtype_reason) == resolve_compute_dtype("auto")
    with pytest.raises(ConfigError, match="compute_dtype 'float16'") as info:
        build_model({"name": family, **fields, "compute_dtype": "float16"}, IMAGE, None,
                    rngs=nnx.Rngs(0))  # fmt: skip
    assert "\n" not in str(info.value)
