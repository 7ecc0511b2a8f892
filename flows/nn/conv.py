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


def _same_pads(w):
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


def _matmul(a, b, compute_dtype=None):
    """``a[..., k] @ b[k, n]`` over the last axis of a; with ``compute_dtype`` (bfloat16) the
    operands are rounded to it and the products accumulated and returned in a's dtype."""
    if compute_dtype is None:
        return jnp.einsum("...k,kn->...n", a, b)
    return jnp.einsum(
        "...k,kn->...n",
        a.astype(compute_dtype),
        b.astype(compute_dtype),
        preferred_element_type=a.dtype,
    )


def _contract_batch(a, b):
    """``sum over every axis but the last of a[..., k] b[..., n]`` -> (k, n)."""
    return jnp.einsum("...k,...n->kn", a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_same(x: jax.Array, w: jax.Array, compute_dtype=None) -> jax.Array:
    """``y[b,h,w,o] = sum_{i,j,c} xpad[b,h+i,w+j,c] w[i,j,c,o]`` with SAME zero padding.

    ``x``: (B, H, W, C_in); ``w``: (kh, kw, C_in, C_out), HWIO. ``compute_dtype``: None for
    full precision, or e.g. ``jnp.bfloat16`` to round the operands of the products (forward
    and input gradient) to it, accumulating in x's dtype; the weight gradient stays in x's
    dtype (XLA:CPU has no bf16 x bf16 -> f32 kernel for that product's layout).
    """
    kh, kw, c, o = w.shape
    pads = _same_pads(w)
    if kh == kw == 1:
        return _matmul(x, w.reshape(c, o), compute_dtype)
    if _input_shift(w):
        patches = _patches(x, _taps(kh, kw), pads)
        return _matmul(patches, w.reshape(kh * kw * c, o), compute_dtype)
    t = _matmul(x, w.transpose(2, 0, 1, 3).reshape(c, kh * kw * o), compute_dtype)
    return _shifted_sum(t, _taps(kh, kw), pads, o)


def _fwd(x, w, compute_dtype):
    return conv2d_same(x, w, compute_dtype), (x, w)


def _bwd(compute_dtype, res, g):
    x, w = res
    kh, kw, c, o = w.shape
    pads = _same_pads(w)
    g = g.astype(x.dtype)
    if kh == kw == 1:
        w2 = w.reshape(c, o)
        dx = _matmul(g, w2.T, compute_dtype)
        dw = _contract_batch(x, g).reshape(w.shape)
    elif _input_shift(w):
        w2 = w.reshape(kh * kw * c, o)
        dw = _contract_batch(_patches(x, _taps(kh, kw), pads), g).reshape(w.shape)
        dx = _matmul(g, w2.T, compute_dtype)
        dx = _shifted_sum(dx, _flipped(kh, kw), _swapped(pads), c)
    else:
        w2 = w.transpose(2, 0, 1, 3).reshape(c, kh * kw * o)
        gp = _patches(g, _flipped(kh, kw), _swapped(pads))  # (B, H, W, kh*kw*o)
        # Contract with the thin operand first: XLA:CPU transposes the left operand of this
        # product, and gp (kh*kw*o channels) is cheaper to transpose than x.
        dw = _contract_batch(gp, x).T.reshape(c, kh, kw, o).transpose(1, 2, 0, 3)
        dx = _matmul(gp, w2.T, compute_dtype)
    return dx.astype(x.dtype), dw.astype(w.dtype)


conv2d_same.defvjp(_fwd, _bwd)


def dense(x: jax.Array, w: jax.Array, compute_dtype=None) -> jax.Array:
    """``x[..., c] @ w[c, o]`` on the last axis (a 1x1 convolution), with the same VJP as
    ``conv2d_same``: the weight gradient is one GEMM contracting every leading axis, which
    XLA:CPU runs on its fast kernel (autodiff's transposed product inside a scan does not)."""
    return conv2d_same(x, w.reshape(1, 1, *w.shape), compute_dtype)
