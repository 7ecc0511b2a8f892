"""A pre-norm transformer over token sequences: the coupling network of Jet and of TarFlow.

``Transformer(x, context) -> out`` for ``x`` of shape (batch, T, in_features):

    h_0 = x W_in + b_in + P[:T] (+ context W_c)        learned positions P; context: labels
    h_l = h_{l-1} + Attn(LN(h_{l-1}))                   (causal=True: token t sees tokens <= t)
    h_l = h_l + MLP(LN(h_l))                            GELU, hidden mlp_ratio * width
    out = LN(h_L) W_out + b_out                         W_out, b_out zero-initialised

The output layer starts at zero, so a coupling (Jet) or an autoregressive block (TarFlow)
that reads its shift and log-scale off ``out`` starts as the identity. With
``context_features`` a learned projection of the context (one-hot labels or class weights;
all-zero weights are the "no label" context of label dropout) is added to every token.

The network need not be exact: a coupling stays exactly triangular whatever it computes, so
its products run at the backend's default precision, in float32.

Causal transformers can also run one token at a time with a key/value cache
(``init_cache`` and ``decode_step``), which is how TarFlow inverts a block: step t reads the
keys and values of tokens < t from the cache instead of recomputing them. ``decode_step``
takes a traced position, so a ``lax.fori_loop`` / ``lax.scan`` over tokens compiles once;
``decode_chunk`` does the same for n consecutive tokens at once (causal among themselves).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from flows.nn.conditioners import hidden_kernel_init

_NEG = -1e30  # attention logit of a masked position (finite: no NaN from -inf - -inf)


@jax.custom_vjp
def _rows_matmul(x, kernel, bias):
    """``x @ kernel + bias`` for rows ``x`` (N, in): an ``nnx.Linear``'s forward, with a
    hand-written VJP whose weight gradient XLA:CPU runs on its fast GEMM kernel.

    Autodiff's weight gradient ``x^T g`` contracts the leading (row) axis of both operands;
    XLA:CPU runs that product on its generic dot, not on the YNNPACK GEMM it uses for
    ``a @ b`` with ``a``'s minor axis contracted (in isolation 45 vs 73 GFLOP/s for
    (3136, 512)^T (3136, 128) on a 2-core Zen 3). So the VJP transposes the thinner of
    ``x`` and ``g`` into a real array (``optimization_barrier`` stops XLA from folding the
    transpose back into the product) and multiplies in the fast layout. Same products and
    sums; only the summation order, and so the float rounding, may differ. Being a custom
    VJP, it has no forward-mode rule: differentiate the transformer with reverse mode
    (``jax.grad``, ``jax.jacrev``), as training and the tests do."""
    return x @ kernel + bias


def _rows_matmul_fwd(x, kernel, bias):
    return x @ kernel + bias, (x, kernel, bias)


def _weight_grad(x, g):
    """``x^T g`` (in, out) for x (N, in), g (N, out), contracting the minor axis of a
    materialised transpose of the thinner operand."""
    if x.shape[1] <= g.shape[1]:
        return jax.lax.optimization_barrier(x.T) @ g
    return jax.lax.optimization_barrier(jax.lax.optimization_barrier(g.T) @ x).T


def _rows_matmul_bwd(res, g):
    x, kernel, bias = res
    dx, dk, db = g @ kernel.T, _weight_grad(x, g), jnp.sum(g, axis=0)
    return dx.astype(x.dtype), dk.astype(kernel.dtype), db.astype(bias.dtype)


_rows_matmul.defvjp(_rows_matmul_fwd, _rows_matmul_bwd)


def dense(layer: nnx.Linear, x, gemm: bool = True):
    """``layer(x)`` for rows ``x`` (N, in); with ``gemm`` through ``_rows_matmul`` (same
    parameters, same forward; the backward pass's weight gradient on the fast kernel), else
    ``layer(x)`` itself. A transformer built with ``matmul_impl='gemm'`` sends every row
    product through it: on TarFlow's MNIST benchmark setting (p4 w128 4x4, batch 64, 2-core
    Zen 3, shared) that made the training step 1.03-1.07x faster (mean 1.05x) over 4 paired
    fresh-process runs of ``bench.throughput``."""
    if not gemm:
        return layer(x)
    return _rows_matmul(x, layer.kernel[...], layer.bias[...])


class Attention(nnx.Module):
    """Multi-head self-attention with one fused q/k/v projection."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        *,
        kernel_init=hidden_kernel_init,
        gemm: bool = False,
        rngs: nnx.Rngs,
    ):
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.gemm = bool(gemm)
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.qkv = nnx.Linear(width, 3 * width, kernel_init=kernel_init, rngs=rngs)
        self.out = nnx.Linear(width, width, kernel_init=kernel_init, rngs=rngs)

    def _heads(self, h, batch: int):
        """(B*T, width) rows -> q, k, v each (B, T, heads, head_dim)."""
        qkv = dense(self.qkv, h, self.gemm).reshape(batch, -1, 3, self.num_heads, self.head_dim)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    def _attend(self, q, k, v, mask):
        """Rows (B*Tq, width) of the attention output of q (B, Tq, H, hd) over k, v."""
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim)
        if mask is not None:
            logits = jnp.where(mask, logits, _NEG)
        weights = jax.nn.softmax(logits, axis=-1)
        o = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return dense(self.out, o.reshape(-1, self.num_heads * self.head_dim), self.gemm)

    def __call__(self, h, batch: int, *, causal: bool):
        """``h``: (B*T, width), the tokens of each example in consecutive rows."""
        q, k, v = self._heads(h, batch)
        t = q.shape[1]
        mask = jnp.tril(jnp.ones((t, t), bool)) if causal else None
        return self._attend(q, k, v, mask)

    def decode(self, h_t, t, cache):
        """One token per example, ``h_t`` (B, width), at position ``t``; ``cache = (keys,
        values)`` each (B, heads, T, head_dim) (the layout the per-token products read
        without transposing the cache), of which positions < t are filled. Returns
        (out (B, width), cache)."""
        b = h_t.shape[0]
        qkv = self.qkv(h_t).reshape(b, 3, self.num_heads, 1, self.head_dim)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, H, 1, hd)
        keys = jax.lax.dynamic_update_slice_in_dim(cache[0], k, t, axis=2)
        values = jax.lax.dynamic_update_slice_in_dim(cache[1], v, t, axis=2)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, keys) / math.sqrt(self.head_dim)
        logits = jnp.where((jnp.arange(keys.shape[2]) <= t)[None, None, None, :], logits, _NEG)
        o = jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, axis=-1), values)
        return self.out(o.reshape(b, -1)), (keys, values)

    def decode_chunk(self, h, batch: int, t, cache):
        """``n`` consecutive tokens per example at positions ``t .. t + n - 1`` (``t``
        traced), rows ``h`` (B*n, width): their keys and values are written into the cache
        (``decode``'s layout), and each attends causally to the cache's positions up to its
        own. Returns (rows (B*n, width), cache). With n = 1 it is ``decode``; the attention
        itself is ``_attend``'s, as in the full pass."""
        q, k, v = self._heads(h, batch)  # (B, n, H, hd)
        n = q.shape[1]
        keys = jax.lax.dynamic_update_slice_in_dim(cache[0], k.transpose(0, 2, 1, 3), t, axis=2)
        values = jax.lax.dynamic_update_slice_in_dim(cache[1], v.transpose(0, 2, 1, 3), t, axis=2)
        mask = jnp.arange(keys.shape[2])[None, :] <= t + jnp.arange(n)[:, None]  # (n, T)
        out = self._attend(q, keys.transpose(0, 2, 1, 3), values.transpose(0, 2, 1, 3), mask)
        return out, (keys, values)


class Block(nnx.Module):
    """``h + Attn(LN(h))`` then ``h + MLP(LN(h))``."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_ratio: int,
        *,
        kernel_init=hidden_kernel_init,
        gemm: bool = False,
        rngs: nnx.Rngs,
    ):
        self.gemm = bool(gemm)
        self.norm1 = nnx.LayerNorm(width, rngs=rngs)
        self.attn = Attention(width, num_heads, kernel_init=kernel_init, gemm=gemm, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, rngs=rngs)
        hidden = mlp_ratio * width
        self.fc1 = nnx.Linear(width, hidden, kernel_init=kernel_init, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, width, kernel_init=kernel_init, rngs=rngs)

    def _mlp(self, h):
        hidden = jax.nn.gelu(dense(self.fc1, self.norm2(h), self.gemm))
        return dense(self.fc2, hidden, self.gemm)

    def __call__(self, h, batch: int, *, causal: bool):
        h = h + self.attn(self.norm1(h), batch, causal=causal)
        return h + self._mlp(h)

    def decode(self, h_t, t, cache):
        a, cache = self.attn.decode(self.norm1(h_t), t, cache)
        h_t = h_t + a
        return h_t + self._mlp(h_t), cache

    def decode_chunk(self, h, batch: int, t, cache):
        """``decode`` for ``n`` consecutive tokens per example, rows ``h`` (B*n, width)."""
        a, cache = self.attn.decode_chunk(self.norm1(h), batch, t, cache)
        h = h + a
        return h + self._mlp(h), cache


class Transformer(nnx.Module):
    """See the module docstring.

    Args:
      in_features, out_features: token features in and out.
      num_tokens: T, the sequence length (the learned position embedding's size).
      width, depth, num_heads, mlp_ratio: the blocks.
      causal: token t attends to tokens <= t only (TarFlow); enables ``decode_step``.
      context_features: size of the context vector (labels), or None.
      position_std: the learned position embedding starts as N(0, position_std^2).
      block_kernel_init: initializer of the blocks' dense kernels (attention and MLP); the
        input and context projections are LeCun-normal, the output projection zero.
      matmul_impl: ``'lax'`` (plain products, autodiff: forward mode works) or ``'gemm'``
        (every row product through ``dense``'s hand-written VJP, faster on XLA:CPU; reverse
        mode only). ``flows.nn.backend.resolve_matmul_impl`` turns ``'auto'`` into one.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        num_tokens: int,
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: int = 4,
        causal: bool = False,
        context_features: int | None = None,
        position_std: float = 0.02,
        block_kernel_init=hidden_kernel_init,
        matmul_impl: str = "lax",
        rngs: nnx.Rngs,
    ):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if matmul_impl not in ("lax", "gemm"):
            raise ValueError(f"matmul_impl must be 'lax' or 'gemm', got {matmul_impl!r}")
        self.gemm = matmul_impl == "gemm"
        self.causal = bool(causal)
        self.num_tokens = int(num_tokens)
        self.num_heads = int(num_heads)
        self.head_dim = width // num_heads
        self.proj_in = nnx.Linear(in_features, width, kernel_init=hidden_kernel_init, rngs=rngs)
        noise = jax.random.normal(rngs.params(), (num_tokens, width))
        self.positions = nnx.Param(position_std * noise)
        self.context_proj = (
            nnx.Linear(context_features, width, kernel_init=hidden_kernel_init, rngs=rngs)
            if context_features
            else None
        )
        self.blocks = nnx.List(
            [
                Block(
                    width,
                    num_heads,
                    mlp_ratio,
                    kernel_init=block_kernel_init,
                    gemm=self.gemm,
                    rngs=rngs,
                )
                for _ in range(depth)
            ]
        )
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        zeros = nnx.initializers.zeros_init()
        self.proj_out = nnx.Linear(width, out_features, kernel_init=zeros, rngs=rngs)

    def _embed(self, x, positions, context):
        b, t, _ = x.shape
        h = dense(self.proj_in, x.reshape(b * t, -1), self.gemm).reshape(b, t, -1) + positions
        if self.context_proj is not None:
            if context is None:
                raise ValueError("this transformer is conditional: pass context")
            h = h + self.context_proj(context)[:, None, :]
        return h

    def __call__(self, x, context=None):
        if x.shape[1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} tokens, got {x.shape[1]}")
        b, t, _ = x.shape
        # Rows (B*T, width): every dense layer is one 2-D product (and so is its gradient).
        h = self._embed(x, self.positions[...], context).reshape(b * t, -1)
        for block in self.blocks:
            h = block(h, b, causal=self.causal)
        return dense(self.proj_out, self.norm(h), self.gemm).reshape(b, t, -1)

    # -- token by token (causal only) ---------------------------------------------------
    def init_cache(self, batch: int, dtype=jnp.float32):
        """Empty keys/values for every block: a list of (keys, values), each
        (batch, heads, T, head_dim)."""
        if not self.causal:
            raise ValueError("a key/value cache needs a causal transformer")
        shape = (batch, self.num_heads, self.num_tokens, self.head_dim)
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.blocks]

    def decode_step(self, x_t, t, cache, context=None):
        """The output at position ``t`` (traced int) for the token ``x_t`` (B, 1, in)
        given the cache of tokens < t; equals ``self(x)[:, t:t+1]`` for the full sequence.
        Returns ``(out (B, 1, out_features), cache)``."""
        position = jax.lax.dynamic_slice_in_dim(self.positions[...], t, 1, axis=0)
        h = self._embed(x_t, position, context)[:, 0]
        new_cache = []
        for block, c in zip(self.blocks, cache, strict=True):
            h, c = block.decode(h, t, c)
            new_cache.append(c)
        return self.proj_out(self.norm(h))[:, None], new_cache

    def decode_chunk(self, x, t, cache, context=None):
        """The outputs at positions ``t .. t + n - 1`` (``t`` traced) for the tokens ``x``
        (B, n, in) given the cache of tokens < t; equals ``self(x_full)[:, t:t+n]``, and
        writes the n tokens' keys and values into the cache. Returns ``(out (B, n,
        out_features), cache)``. (TarFlow's Jacobi inverse updates a chunk of tokens at a
        time with it.)"""
        b, n, _ = x.shape
        positions = jax.lax.dynamic_slice_in_dim(self.positions[...], t, n, axis=0)
        h = self._embed(x, positions, context).reshape(b * n, -1)
        new_cache = []
        for block, c in zip(self.blocks, cache, strict=True):
            h, c = block.decode_chunk(h, b, t, c)
            new_cache.append(c)
        return dense(self.proj_out, self.norm(h), self.gemm).reshape(b, n, -1), new_cache
