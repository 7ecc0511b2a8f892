"""``flows.nn.conv``: the GEMM-based convolution equals ``lax.conv_general_dilated``, value and
both gradients, on both code paths (input shift: C_in <= C_out; output shift: C_in > C_out)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from flows.nn.conv import conv2d_same, dense


def _reference(x, w):
    kh, kw = w.shape[:2]
    pads = (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2))
    return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "kernel",
    [
        (3, 3, 2, 5),
        (3, 3, 5, 2),
        (1, 1, 3, 4),
        (2, 2, 3, 1),
        (3, 2, 4, 4),
        (5, 5, 1, 3),
        (4, 3, 6, 2),
    ],
)
def test_conv_matches_lax_float64(kernel):
    with jax.enable_x64(True):
        kx, kw, kg = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (2, 5, 6, kernel[2]), jnp.float64)
        w = jax.random.normal(kw, kernel, jnp.float64)
        g = jax.random.normal(kg, (2, 5, 6, kernel[3]), jnp.float64)
        y, vjp = jax.vjp(conv2d_same, x, w)
        y_ref, vjp_ref = jax.vjp(_reference, x, w)
        np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
        for a, b in zip(vjp(g), vjp_ref(g), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_conv_inside_scan_jit_float32():
    """The path Glow uses: stacked weights, ``lax.scan``, jit; compared with lax autodiff."""
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (3, 4, 4, 4))
    ws = 0.3 * jax.random.normal(kw, (3, 3, 3, 4, 4))

    def run(conv):
        def loss(ws, x):
            y, _ = lax.scan(lambda h, w: (jnp.tanh(conv(h, w)), None), x, ws)
            return jnp.sum(y**2)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(ws, x)

    (v, g), (v_ref, g_ref) = run(conv2d_same), run(_reference)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_dense_is_a_matmul_with_its_gradients():
    kx, kw, kg = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(kx, (2, 3, 3, 5))
    w = jax.random.normal(kw, (5, 7))
    g = jax.random.normal(kg, (2, 3, 3, 7))
    y, vjp = jax.vjp(dense, x, w)
    y_ref, vjp_ref = jax.vjp(lambda x, w: x @ w, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(vjp(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", [(3, 3, 2, 16), (3, 3, 16, 2), (1, 1, 8, 8)])
def test_bfloat16_products_stay_close_to_float32(kernel):
    kx, kw, kg = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (2, 5, 6, kernel[2]))
    w = jax.random.normal(kw, kernel) / jnp.sqrt(kernel[0] * kernel[1] * kernel[2])
    g = jax.random.normal(kg, (2, 5, 6, kernel[3]))
    y, vjp = jax.vjp(lambda x, w: conv2d_same(x, w, jnp.bfloat16), x, w)
    y_ref, vjp_ref = jax.vjp(conv2d_same, x, w)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, y_ref, atol=3e-2 * float(jnp.max(jnp.abs(y_ref))))
    for a, b in zip(vjp(g), vjp_ref(g), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, atol=3e-2 * float(jnp.max(jnp.abs(b))))


def _nudged_glow(image_shape, hidden_channels, wave, **kwargs):
    """A one-level, two-step Glow whose parameters are all moved by ``0.05 * wave(index)``
    (deterministic, so models built with different options share their parameters)."""
    from flax import nnx

    from flows.models.glow import Glow

    model = Glow(
        image_shape,
        num_levels=1,
        num_steps=2,
        hidden_channels=hidden_channels,
        rngs=nnx.Rngs(0),
        **kwargs,
    )
    params = nnx.state(model, nnx.Param)
    nnx.update(
        model,
        jax.tree.map(lambda v: v + 0.05 * wave(jnp.arange(v.size)).reshape(v.shape), params),
    )
    return model


@pytest.mark.slow
def test_bfloat16_products_keep_the_flow_exactly_invertible():
    from flax import nnx

    from flows.nn.conditioners import ConvConditioner

    x = jax.random.uniform(jax.random.key(4), (3, 4, 4, 1))
    lp32 = _nudged_glow((4, 4, 1), 8, jnp.cos, compute_dtype="float32").log_prob(x)
    model = _nudged_glow((4, 4, 1), 8, jnp.cos, compute_dtype="bfloat16")
    nets = [n for _, n in nnx.iter_graph(model) if isinstance(n, ConvConditioner)]
    assert nets and all(n.compute_dtype == "bfloat16" for n in nets)
    latents, _ = model.forward_and_log_det(x)
    np.testing.assert_allclose(model.inverse(latents), x, atol=1e-5)
    np.testing.assert_allclose(model.log_prob(x), lp32, rtol=1e-2)


def test_relu_cast_gradient_reads_the_mask_off_the_output():
    from flows.nn.conditioners import relu_to

    x = jnp.array([[-1.5, -0.0, 0.0, 1e-3, 2.0, 3.25]])
    g = jnp.arange(1.0, 7.0).reshape(1, 6)
    y, vjp = jax.vjp(lambda x: relu_to(x, jnp.bfloat16), x)
    assert y.dtype == jnp.bfloat16
    (dx,) = vjp(g.astype(jnp.bfloat16))
    assert dx.dtype == jnp.float32
    np.testing.assert_array_equal(dx, jnp.where(x > 0, g, 0.0))


@pytest.mark.slow
def test_bfloat16_glow_gradients_follow_float32_under_scan_and_jit():
    """The mixed-precision training path (bf16 products and hidden activations, weight
    gradients summed in f32), with and without recomputed hidden activations, through
    scanned steps and jit: every parameter's gradient points where the float32 one does,
    and the loss is the float32 loss to bf16 accuracy."""
    from flax import nnx

    x = jax.random.uniform(jax.random.key(5), (4, 8, 8, 2))

    def loss_and_grads(compute_dtype, remat=False):
        model = _nudged_glow(
            (8, 8, 2), 16, jnp.sin, compute_dtype=compute_dtype, remat_coupling_nets=remat
        )
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        @jax.jit
        def f(params):
            return -jnp.mean(nnx.merge(graphdef, params, rest).log_prob(x))

        return jax.value_and_grad(f)(params)

    l32, g32 = loss_and_grads("float32")
    # Recomputing the hidden activations changes no gradient (float32: same products).
    l32r, g32r = loss_and_grads("float32", remat=True)
    np.testing.assert_allclose(l32r, l32, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g32r), jax.tree.leaves(g32), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for remat in (False, True):
        l16, g16 = loss_and_grads("bfloat16", remat)
        np.testing.assert_allclose(l16, l32, rtol=1e-2)
        for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32), strict=True):
            assert a.dtype == jnp.float32 and np.all(np.isfinite(a))
            na, nb = float(jnp.linalg.norm(a)), float(jnp.linalg.norm(b))
            if nb > 1e-6:
                cos = float(jnp.vdot(a.ravel(), b.ravel())) / (na * nb)
                assert cos > 0.98, cos


def test_model_config_sets_mixed_precision_and_remat():
    from flax import nnx

    from configs.glow_digits import get_config
    from flows.models import build_model
    from flows.nn.conditioners import ConvConditioner

    config = get_config("smoke")
    config.model.compute_dtype = "bfloat16"
    config.model.remat_coupling_nets = True
    model = build_model(config.model, (8, 8, 1), 10, rngs=nnx.Rngs(0))
    nets = [n for _, n in nnx.iter_graph(model) if isinstance(n, ConvConditioner)]
    assert nets and all(n.compute_dtype == "bfloat16" and n.remat for n in nets)
    config.model.compute_dtype = "float16"
    with pytest.raises(ValueError, match="compute_dtype"):
        build_model(config.model, (8, 8, 1), 10, rngs=nnx.Rngs(0))


def test_lax_impl_matches_gemm_and_is_forward_differentiable():
    """``conv_impl='lax'``: the same map as the GEMM path (float32, and with bf16 products;
    both shift paths of the GEMM side), and forward-mode autodiff works through it
    (jacfwd == jacrev); dense alike."""
    from flows.nn.conv import conv2d, linear

    kx, kw = jax.random.split(jax.random.key(6))
    x = jax.random.normal(kx, (1, 3, 3, 2))
    w1 = jax.random.normal(kw, (3, 3, 2, 5)) / 3.0  # input shift on the GEMM side
    w2 = jnp.transpose(w1, (0, 1, 3, 2))  # (3, 3, 5, 2): output shift

    @functools.partial(jax.jit, static_argnames=("impl", "cd"))
    def net(x, impl, cd=None):
        h = conv2d(x, w1, cd, impl=impl)
        h = linear(jnp.tanh(h), w1[1, 1].T @ w1[0, 0], cd, impl=impl)
        return conv2d(h, w2, cd, impl=impl)

    for cd, tol in ((None, 1e-5), (jnp.bfloat16, 3e-2)):
        y = net(x, "lax", cd)
        assert y.dtype == jnp.float32
        np.testing.assert_allclose(y, net(x, "gemm", cd), rtol=tol, atol=tol)

    @jax.jit
    def jacobians(x):
        f = functools.partial(net, impl="lax")
        return jax.jacfwd(f)(x), jax.jacrev(f)(x)

    forward, reverse = jacobians(x)
    np.testing.assert_allclose(forward, reverse, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_glow_lax_and_gemm_convolutions_compute_the_same_flow():
    """The same parameters, ``conv_impl='lax'`` vs ``'gemm'``: log p(x), the latents, and
    the inverse, compiled."""
    from flax import nnx

    x = jax.random.uniform(jax.random.key(7), (2, 4, 4, 1))

    @nnx.jit
    def run(model, x):
        latents, _ = model.forward_and_log_det(x)
        return model.log_prob(x), latents[0], model.inverse(latents)

    out = {}
    for impl in ("lax", "gemm"):
        model = _nudged_glow((4, 4, 1), 6, jnp.cos, conv_impl=impl)
        assert model.conv_impl == impl
        out[impl] = run(model, x)
    for a, b in zip(out["lax"], out["gemm"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["lax"][2], x, atol=1e-5)


def test_auto_resolution_follows_the_backend_and_the_cpu_flags(tmp_path):
    """``flows.nn.backend``: 'auto' -> gemm on CPU, lax elsewhere; bf16 products only on
    GPU/TPU or a CPU whose /proc/cpuinfo lists avx512_bf16 or amx_bf16 (faked here)."""
    from flows.errors import ConfigError
    from flows.nn.backend import resolve_compute_dtype, resolve_conv_impl

    assert resolve_conv_impl("auto", backend="cpu")[0] == "gemm"
    assert resolve_conv_impl("auto", backend="gpu")[0] == "lax"
    assert resolve_conv_impl("auto", backend="tpu")[0] == "lax"
    assert resolve_conv_impl("gemm", backend="gpu") == ("gemm", "gemm: as configured")
    with pytest.raises(ConfigError, match="conv_impl"):
        resolve_conv_impl("cudnn")

    plain, bf16, amx = (tmp_path / n for n in ("plain", "bf16", "amx"))
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f\n")
    bf16.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    dtype, reason = resolve_compute_dtype("auto", backend="cpu", cpuinfo_path=str(plain))
    assert dtype == "float32" and "no avx512_bf16/amx_bf16" in reason
    for path, flag in ((bf16, "avx512_bf16"), (amx, "amx_bf16")):
        dtype, reason = resolve_compute_dtype("auto", backend="cpu", cpuinfo_path=str(path))
        assert dtype == "bfloat16" and flag in reason
    missing = str(tmp_path / "none")  # not Linux: no flags known, the safe float32
    assert resolve_compute_dtype("auto", backend="cpu", cpuinfo_path=missing)[0] == "float32"
    assert resolve_compute_dtype("auto", backend="gpu", cpuinfo_path=str(plain))[0] == "bfloat16"
    assert resolve_compute_dtype("bfloat16", backend="cpu")[0] == "bfloat16"
    with pytest.raises(ConfigError, match="compute_dtype"):
        resolve_compute_dtype("float16")


@pytest.mark.slow
def test_glow_resolves_auto_when_built(monkeypatch):
    """Glow resolves both fields once, at build time, from ``jax.default_backend()`` (faked
    here: a GPU), threads them to every network, and keeps the choice and the reason."""
    from flax import nnx

    import flows.nn.backend as backend
    from flows.models.glow import Glow
    from flows.nn.conditioners import ConvConditioner
    from flows.nn.conditioners import ZeroConvConditioner as ZeroConv

    monkeypatch.setattr(backend.jax, "default_backend", lambda: "gpu")
    model = Glow(
        (4, 4, 1),
        num_levels=2,
        num_steps=1,
        hidden_channels=4,
        compute_dtype="auto",
        rngs=nnx.Rngs(0),
    )
    assert (model.conv_impl, model.compute_dtype) == ("lax", "bfloat16")
    assert model.compute_dtype_reason.startswith("bfloat16: gpu")
    nets = [n for _, n in nnx.iter_graph(model) if isinstance(n, ConvConditioner | ZeroConv)]
    assert len(nets) == 3 and all(n.conv_impl == "lax" for n in nets)  # 2 couplings, 1 split
    assert all(n.compute_dtype == "bfloat16" for n in nets if isinstance(n, ConvConditioner))
