"""A stride-1, SAME-padded NHWC convolution written as matrix products, with a hand-written VJP.

Why: XLA:CPU runs matrix products (``dot``) through its fast GEMM kernels, but convolutions,
and above all the backward convolutions that autodiff emits inside ``lax.scan`` (the K
stacked steps of a Glow level), take slow paths: unusual dimension layouts, or a weight
gradient written as a convolution with a (H, W) kernel, which ran a Glow training step 5 to
20x slower. So a k x k convolution is computed as k*k shifted 1x1 convolutions, i.e. one GEMM
plus cheap shifts, on whichever side (input or output) has fewer channels:

* input shift (``C_in <= C_out``): ``P = patches(x)`` gathers the k*k shifted copies of the
  zero-padded input, ``(B, H, W, k*k*C_in)``; then ``y = P @ W`` with ``W`` reshaped to
  ``(k*k*C_in, C_out)``.
* output shift (``C_in > C_out``): ``T = x @ W'`` with ``W'`` of shape ``(C_in, k*k*C_out)``
  computes every tap's contribution at once; ``y`` is the sum of the k*k shifted slices of T.

Both compute ``y[b,h,w,o] = sum_{i,j,c} xpad[b,h+i,w+j,c] w[i,j,c,o]`` exactly (the same
products, summed in another order). The backward pass is again patches + GEMMs: the adjoint
of ``patches`` is a shifted sum with flipped offsets and swapped padding, and vice versa, so

* input shift:  ``dW = P^T g``,  ``dx = shifted_sum(g @ W^T)``;
* output shift: ``G = patches(g)``, ``dW' = x^T G``, ``dx = G @ W'^T``.

Tests compare value and gradients with ``lax.conv_general_dilated`` and its autodiff.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def same_pads(w):
    kh, kw = w.shape[:2]
    return (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2))


def _taps(kh, kw):
    return [(i, j) for i in range(kh) for j in range(kw)]


def _pad(x, pads):
    (pt, pb), (pl, pr) = pads
    return jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))


def _patches(x, offsets, pads):
    """``(B, H, W, C) -> (B, H, W, len(offsets) * C)``: the padded input shifted by each
    offset, concatenated offset-major on the channel axis."""
    _, h, w, _ = x.shape
    xp = _pad(x, pads)
    return jnp.concatenate([xp[:, i : i + h, j : j + w, :] for i, j in offsets], axis=-1)


def _shifted_sum(t, offsets, pads, channels):
    """``(B, H, W, len(offsets) * channels) -> (B, H, W, channels)``: the sum over offsets k
    of the padded t's k-th channel block shifted by offset k (the adjoint of ``_patches``)."""
    _, h, w, _ = t.shape
    tp = _pad(t, pads)
    out = None
    for k, (i, j) in enumerate(offsets):
        part = tp[:, i : i + h, j : j + w, k * channels : (k + 1) * channels]
        out = part if out is None else out + part
    return out


def _flipped(kh, kw):
    return [(kh - 1 - i, kw - 1 - j) for i, j in _taps(kh, kw)]


def _swapped(pads):
    (pt, pb), (pl, pr) = pads
    return ((pb, pt), (pr, pl))


def _input_shift(w):
    """True to gather the input's shifts (fewer input channels), False for the output's."""
    return w.shape[2] <= w.shape[3]


def _matmul(a, b, compute_dtype, out_dtype):
    """``a[..., k] @ b[k, n]`` over the last axis of a, returned in ``out_dtype``. With a
    ``compute_dtype`` (bfloat16) both operands are rounded to it and the products summed in
    ``out_dtype``: on CPUs with AVX512-BF16 that runs about twice as fast as float32."""
    if compute_dtype is not None:
        a, b = a.astype(compute_dtype), b.astype(compute_dtype)
    return jnp.einsum("...k,kn->...n", a, b, preferred_element_type=out_dtype)


def _contract_batch(a, b, out_dtype):
    """``sum over every axis but the last of a[..., k] b[..., n]`` -> (k, n), in out_dtype.

    Always from ``out_dtype`` operands (a bfloat16 operand is widened exactly): XLA:CPU runs
    this product (a transposed operand) through a float32 kernel anyway, widening bf16
    operands itself, and weight gradients are where rounding would accumulate. One 2-D
    product: XLA:CPU hands those to its fast GEMM library."""
    a = a.reshape(-1, a.shape[-1]).astype(out_dtype)
    b = b.reshape(-1, b.shape[-1]).astype(out_dtype)
    return jnp.einsum("mk,mn->kn", a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_same(x: jax.Array, w: jax.Array, compute_dtype=None) -> jax.Array:
    """``y[b,h,w,o] = sum_{i,j,c} xpad[b,h+i,w+j,c] w[i,j,c,o]`` with SAME zero padding.

    ``x``: (B, H, W, C_in); ``w``: (kh, kw, C_in, C_out), HWIO. The result has w's dtype.
    ``compute_dtype``: None for full precision, or e.g. ``jnp.bfloat16`` to round the
    operands of the products of the forward pass and of the input gradient to it, summing
    in w's dtype; the weight gradient is summed in w's dtype from the residual input (in
    ``compute_dtype``, as the forward product saw it) and the full-precision output
    gradient. ``x`` may already be in ``compute_dtype`` (a network that keeps its hidden
    activations in bfloat16 then moves half the bytes, and the backward pass keeps half).
    """
    kh, kw, c, o = w.shape
    pads = same_pads(w)
    if compute_dtype is not None:
        x = x.astype(compute_dtype)
    if kh == kw == 1:
        return _matmul(x, w.reshape(c, o), compute_dtype, w.dtype)
    if _input_shift(w):
        patches = _patches(x, _taps(kh, kw), pads)
        return _matmul(patches, w.reshape(kh * kw * c, o), compute_dtype, w.dtype)
    t = _matmul(x, w.transpose(2, 0, 1, 3).reshape(c, kh * kw * o), compute_dtype, w.dtype)
    return _shifted_sum(t, _taps(kh, kw), pads, o)


def _fwd(x, w, compute_dtype):
    # The residual is x as the products saw it (in compute_dtype when one is set); a
    # zero-size array carries x's own dtype to the backward pass.
    xc = x if compute_dtype is None else x.astype(compute_dtype)
    return conv2d_same(xc, w, compute_dtype), (xc, w, jnp.zeros((0,), x.dtype))


def _bwd(compute_dtype, res, g):
    xc, w, x_dtype_tag = res
    kh, kw, c, o = w.shape
    pads = same_pads(w)
    acc = w.dtype
    g = g.astype(acc)
    if kh == kw == 1:
        w2 = w.reshape(c, o)
        dx = _matmul(g, w2.T, compute_dtype, acc)
        dw = _contract_batch(xc, g, acc).reshape(w.shape)
    elif _input_shift(w):
        w2 = w.reshape(kh * kw * c, o)
        dw = _contract_batch(_patches(xc, _taps(kh, kw), pads), g, acc).reshape(w.shape)
        dx = _matmul(g, w2.T, compute_dtype, acc)
        dx = _shifted_sum(dx, _flipped(kh, kw), _swapped(pads), c)
    else:
        w2 = w.transpose(2, 0, 1, 3).reshape(c, kh * kw * o)
        gp = _patches(g, _flipped(kh, kw), _swapped(pads))  # (B, H, W, kh*kw*o)
        # Contract with the thin operand first: XLA:CPU transposes the left operand of this
        # product, and gp (kh*kw*o channels) is cheaper to transpose than x.
        dw = _contract_batch(gp, xc, acc).T.reshape(c, kh, kw, o).transpose(1, 2, 0, 3)
        dx = _matmul(gp, w2.T, compute_dtype, acc)
    return dx.astype(x_dtype_tag.dtype), dw.astype(w.dtype)


conv2d_same.defvjp(_fwd, _bwd)


def dense(x: jax.Array, w: jax.Array, compute_dtype=None) -> jax.Array:
    """``x[..., c] @ w[c, o]`` on the last axis (a 1x1 convolution), with the same VJP as
    ``conv2d_same``: the weight gradient is one GEMM contracting every leading axis, which
    XLA:CPU runs on its fast kernel (autodiff's transposed product inside a scan does not)."""
    return conv2d_same(x, w.reshape(1, 1, *w.shape), compute_dtype)


def lax_conv2d_same(x: jax.Array, w: jax.Array, compute_dtype=None) -> jax.Array:
    """``conv2d_same`` as one ``lax.conv_general_dilated`` (NHWC x HWIO), differentiated by
    JAX's own rules (so ``jax.jvp`` / ``jax.jacfwd`` work, and GPU/TPU run their convolution
    kernels). ``compute_dtype``: both operands rounded to it, the sum in w's dtype."""
    if compute_dtype is not None:
        x, wc = x.astype(compute_dtype), w.astype(compute_dtype)
    else:
        wc = w
    return jax.lax.conv_general_dilated(
        x,
        wc,
        (1, 1),
        same_pads(w),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=w.dtype,
    )


def lax_dense(x: jax.Array, w: jax.Array, compute_dtype=None) -> jax.Array:
    """``dense`` as a plain product with autodiff (see ``lax_conv2d_same``)."""
    if compute_dtype is not None:
        x, wc = x.astype(compute_dtype), w.astype(compute_dtype)
    else:
        wc = w
    return jnp.einsum("...c,co->...o", x, wc, preferred_element_type=w.dtype)


CONV2D = {"gemm": conv2d_same, "lax": lax_conv2d_same}
DENSE = {"gemm": dense, "lax": lax_dense}


def conv2d(x: jax.Array, w: jax.Array, compute_dtype=None, *, impl: str) -> jax.Array:
    """The SAME-padded stride-1 convolution by the resolved ``impl`` ('gemm' or 'lax', see
    ``flows.nn.backend.resolve_conv_impl``); both compute the same map."""
    return CONV2D[impl](x, w, compute_dtype)


def linear(x: jax.Array, w: jax.Array, compute_dtype=None, *, impl: str) -> jax.Array:
    """``x[..., c] @ w[c, o]`` by the resolved ``impl`` ('gemm' or 'lax')."""
    return DENSE[impl](x, w, compute_dtype)
