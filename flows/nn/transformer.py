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

Options for computing another code base's transformer on its weights (ml-tarflow's
``MetaBlock``): ``final_norm=False`` drops the last LN (``out = h_L W_out + b_out``),
``norm_epsilon`` is the LNs' epsilon (PyTorch's 1e-5, flax's 1e-6), ``gelu_approximate=False``
the exact (erf) GELU instead of the tanh approximation, ``context_bias=False`` makes the context
projection a table of per-class rows (no bias), and ``decode_step(..., attention_temperature=
tau)`` divides the attention logits of each example by its ``tau``.

The network need not be exact: a coupling stays exactly triangular whatever it computes, so
its products run at the backend's default precision. ``compute_dtype='bfloat16'`` rounds the
operands of every matrix product (the dense layers and the two attention products) to bf16
and sums them in the parameters' dtype (float32); everything else (the residual stream,
layer norms, GELU, softmax, the key/value cache) stays float32. The network computed is then
another function, the same one in every direction (``decode_step`` included), so a flow built
on it stays exactly invertible and its log-det exact for the map computed.

Causal transformers can also run one token at a time with a key/value cache
(``init_cache`` and ``decode_step``), which is how TarFlow inverts a block: step t reads the
keys and values of tokens < t from the cache instead of recomputing them. ``decode_step``
takes a traced position, so a ``lax.fori_loop`` / ``lax.scan`` over tokens compiles once;
``decode_chunk`` does the same for n consecutive tokens at once (causal among themselves).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from flows.nn.backend import check_compute_dtype
from flows.nn.conditioners import hidden_kernel_init
from flows.nn.conv import lax_dense

_NEG = -1e30  # attention logit of a masked position (finite: no NaN from -inf - -inf)


def operand_dtype(compute_dtype: str):
    """The operand dtype of the products for a ``compute_dtype`` name: None for float32
    (plain products), else ``jnp.bfloat16``."""
    name = check_compute_dtype(compute_dtype)
    return None if name == "float32" else jnp.dtype(name)


def _einsum(spec: str, a, b, compute_dtype):
    """``jnp.einsum(spec, a, b)``; with a ``compute_dtype`` both operands rounded to it and
    the products summed in their own (wider) dtype."""
    if compute_dtype is None:
        return jnp.einsum(spec, a, b)
    out = jnp.result_type(a, b)
    a, b = a.astype(compute_dtype), b.astype(compute_dtype)
    return jnp.einsum(spec, a, b, preferred_element_type=out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _rows_matmul(x, kernel, bias, compute_dtype=None):
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
    (``jax.grad``, ``jax.jacrev``), as training and the tests do.

    ``compute_dtype`` (None or bfloat16): the operands of the forward product and of the
    input gradient's are rounded to it and summed in the kernel's dtype; the residual is x
    as the product saw it (half the bytes in bf16), and the weight gradient is summed from
    it, widened exactly, and the full-precision output gradient (as ``flows.nn.conv``'s:
    weight gradients are where rounding would accumulate)."""
    return _affine(x, kernel, bias, compute_dtype)


def _affine(x, kernel, bias, compute_dtype):
    if compute_dtype is None:
        return x @ kernel + bias
    return lax_dense(x, kernel, compute_dtype) + bias


def _rows_matmul_fwd(x, kernel, bias, compute_dtype):
    # A zero-size array carries x's own dtype to the backward pass.
    xc = x if compute_dtype is None else x.astype(compute_dtype)
    out = _affine(xc, kernel, bias, compute_dtype)
    return out, (xc, kernel, bias, jnp.zeros((0,), x.dtype))


def _weight_grad(x, g):
    """``x^T g`` (in, out) for x (N, in), g (N, out), contracting the minor axis of a
    materialised transpose of the thinner operand."""
    if x.shape[1] <= g.shape[1]:
        return jax.lax.optimization_barrier(x.T) @ g
    return jax.lax.optimization_barrier(jax.lax.optimization_barrier(g.T) @ x).T


def _rows_matmul_bwd(compute_dtype, res, g):
    x, kernel, bias, x_dtype_tag = res
    if compute_dtype is None:
        dx = g @ kernel.T
    else:  # as flows.nn.conv's VJP: the input gradient from rounded operands, the weight
        # gradient from the (exactly widened) residual and the full-precision g
        dx = lax_dense(g, kernel.T, compute_dtype)
        x = x.astype(g.dtype)
    dk, db = _weight_grad(x, g), jnp.sum(g, axis=0)
    return dx.astype(x_dtype_tag.dtype), dk.astype(kernel.dtype), db.astype(bias.dtype)


_rows_matmul.defvjp(_rows_matmul_fwd, _rows_matmul_bwd)


def dense(layer: nnx.Linear, x, gemm: bool = True, compute_dtype=None):
    """``layer(x)`` for rows ``x`` (N, in); with ``gemm`` through ``_rows_matmul`` (same
    parameters, same forward; the backward pass's weight gradient on the fast kernel), else
    ``layer(x)`` itself. A transformer built with ``matmul_impl='gemm'`` sends every row
    product through it: on TarFlow's MNIST benchmark setting (p4 w128 4x4, batch 64, 2-core
    Zen 3, shared) that made the training step 1.03-1.07x faster (mean 1.05x) over 4 paired
    fresh-process runs of ``bench.throughput``. ``compute_dtype`` (None or bfloat16): the
    product's operands rounded to it, summed in the kernel's dtype, the bias added after."""
    if gemm:
        return _rows_matmul(x, layer.kernel[...], layer.bias[...], compute_dtype)
    if compute_dtype is None:
        return layer(x)
    y = lax_dense(x, layer.kernel[...], compute_dtype)
    return y if layer.bias is None else y + layer.bias[...]


QKV_INITS = ("fused", "separate")


def side_by_side_init(init, parts: int):
    """An initializer of an (in, parts * out) kernel drawn as ``parts`` independent (in, out)
    kernels placed side by side: a fan-dependent ``init`` (Xavier) then sees the fans of one
    part, as when q, k and v are separate layers (flax linen's attention), not of the whole."""

    def draw(key, shape, dtype=jnp.float32):
        fan_in, out = shape
        if out % parts:
            raise ValueError(f"{out} output features do not split into {parts} parts")
        keys = jax.random.split(key, parts)
        return jnp.concatenate([init(k, (fan_in, out // parts), dtype) for k in keys], axis=1)

    return draw


class Attention(nnx.Module):
    """Multi-head self-attention with one fused q/k/v projection.

    ``qkv_init``: ``'fused'`` draws the (width, 3 width) q/k/v kernel with ``kernel_init`` as
    one matrix; ``'separate'`` draws q, k and v as three (width, width) kernels
    (``side_by_side_init``), which is what a fan-dependent init of three layers gives.
    ``operand_dtype``: None (float32 products) or the products' operand dtype (bfloat16, the
    ``compute_dtype`` of ``dense``): the projections and both attention products (the
    softmax stays in float32)."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        *,
        kernel_init=hidden_kernel_init,
        qkv_init: str = "fused",
        gemm: bool = False,
        operand_dtype=None,
        rngs: nnx.Rngs,
    ):
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        if qkv_init not in QKV_INITS:
            raise ValueError(f"qkv_init must be one of {QKV_INITS}, got {qkv_init!r}")
        self.gemm = bool(gemm)
        self.operand_dtype = operand_dtype
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        qkv_kernel_init = kernel_init if qkv_init == "fused" else side_by_side_init(kernel_init, 3)
        self.qkv = nnx.Linear(width, 3 * width, kernel_init=qkv_kernel_init, rngs=rngs)
        self.out = nnx.Linear(width, width, kernel_init=kernel_init, rngs=rngs)

    def _heads(self, h, batch: int):
        """(B*T, width) rows -> q, k, v each (B, heads, T, head_dim): head-major, so both
        attention products are batched over (B, heads) with contiguous operands (on XLA:CPU
        a float32 product fed by a strided view of the token-major projection runs on a
        slower kernel), and the key/value cache is written without a transpose."""
        qkv = dense(self.qkv, h, self.gemm, self.operand_dtype)
        qkv = qkv.reshape(batch, -1, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _attend(self, q, k, v, mask, temperature=None):
        """Rows (B*Tq, width) of the attention output of q (B, H, Tq, hd) over k, v (B, H,
        Tk, hd); ``mask`` (Tq, Tk) or None; ``temperature``: None, or a scalar or (B,) array
        dividing each example's logits."""
        cd = self.operand_dtype
        logits = _einsum("bhqd,bhkd->bhqk", q, k, cd) / math.sqrt(self.head_dim)
        if temperature is not None:
            logits = logits / jnp.reshape(jnp.asarray(temperature, logits.dtype), (-1, 1, 1, 1))
        if mask is not None:
            logits = jnp.where(mask, logits, _NEG)
        weights = jax.nn.softmax(logits, axis=-1)
        o = _einsum("bhqk,bhkd->bhqd", weights, v, cd).transpose(0, 2, 1, 3)
        return dense(self.out, o.reshape(-1, self.num_heads * self.head_dim), self.gemm, cd)

    def __call__(self, h, batch: int, *, causal: bool, temperature=None):
        """``h``: (B*T, width), the tokens of each example in consecutive rows;
        ``temperature`` as ``_attend``'s."""
        q, k, v = self._heads(h, batch)
        t = q.shape[2]
        mask = jnp.tril(jnp.ones((t, t), bool)) if causal else None
        return self._attend(q, k, v, mask, temperature)

    def decode(self, h_t, t, cache, temperature=None):
        """One token per example, ``h_t`` (B, width), at position ``t``; ``cache = (keys,
        values)`` each (B, heads, T, head_dim) (the layout the per-token products read
        without transposing the cache), of which positions < t are filled. ``temperature``:
        None, or a scalar or (B,) array dividing each example's attention logits. Returns
        (out (B, width), cache). The cache keeps float32 keys and values (the dtype it was
        made in) whatever ``operand_dtype``: they are rounded when the product reads them, to
        the values the full pass's product sees, and a float32 cache is what the other
        decoders of the same cache write into."""
        b, cd = h_t.shape[0], self.operand_dtype
        qkv = dense(self.qkv, h_t, False, cd).reshape(b, 3, self.num_heads, 1, self.head_dim)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (B, H, 1, hd)
        keys = jax.lax.dynamic_update_slice_in_dim(cache[0], k, t, axis=2)
        values = jax.lax.dynamic_update_slice_in_dim(cache[1], v, t, axis=2)
        logits = _einsum("bhqd,bhkd->bhqk", q, keys, cd) / math.sqrt(self.head_dim)
        if temperature is not None:
            logits = logits / jnp.reshape(jnp.asarray(temperature, logits.dtype), (-1, 1, 1, 1))
        logits = jnp.where((jnp.arange(keys.shape[2]) <= t)[None, None, None, :], logits, _NEG)
        o = _einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, axis=-1), values, cd)
        return dense(self.out, o.reshape(b, -1), False, cd), (keys, values)

    def decode_chunk(self, h, batch: int, t, cache, temperature=None):
        """``n`` consecutive tokens per example at positions ``t .. t + n - 1`` (``t``
        traced), rows ``h`` (B*n, width): their keys and values are written into the cache
        (``decode``'s layout), and each attends causally to the cache's positions up to its
        own. Returns (rows (B*n, width), cache). With n = 1 it is ``decode``; the attention
        itself is ``_attend``'s, as in the full pass."""
        q, k, v = self._heads(h, batch)  # (B, H, n, hd): the cache's layout
        n = q.shape[2]
        keys = jax.lax.dynamic_update_slice_in_dim(cache[0], k, t, axis=2)
        values = jax.lax.dynamic_update_slice_in_dim(cache[1], v, t, axis=2)
        mask = jnp.arange(keys.shape[2])[None, :] <= t + jnp.arange(n)[:, None]  # (n, T)
        out = self._attend(q, keys, values, mask, temperature)
        return out, (keys, values)


class Block(nnx.Module):
    """``h + Attn(LN(h))`` then ``h + MLP(LN(h))`` (LN epsilon ``norm_epsilon``; the MLP's
    GELU the tanh approximation unless ``gelu_approximate=False``; ``operand_dtype``: the
    products' operand dtype or None, as ``Attention``'s)."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_ratio: int,
        *,
        kernel_init=hidden_kernel_init,
        qkv_init: str = "fused",
        gemm: bool = False,
        operand_dtype=None,
        norm_epsilon: float = 1e-6,
        gelu_approximate: bool = True,
        rngs: nnx.Rngs,
    ):
        self.gemm = bool(gemm)
        self.operand_dtype = operand_dtype
        self.gelu_approximate = bool(gelu_approximate)
        self.norm1 = nnx.LayerNorm(width, epsilon=norm_epsilon, rngs=rngs)
        self.attn = Attention(
            width,
            num_heads,
            kernel_init=kernel_init,
            qkv_init=qkv_init,
            gemm=gemm,
            operand_dtype=operand_dtype,
            rngs=rngs,
        )
        self.norm2 = nnx.LayerNorm(width, epsilon=norm_epsilon, rngs=rngs)
        hidden = mlp_ratio * width
        self.fc1 = nnx.Linear(width, hidden, kernel_init=kernel_init, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, width, kernel_init=kernel_init, rngs=rngs)

    def _mlp(self, h):
        hidden = jax.nn.gelu(
            dense(self.fc1, self.norm2(h), self.gemm, self.operand_dtype),
            approximate=self.gelu_approximate,
        )
        return dense(self.fc2, hidden, self.gemm, self.operand_dtype)

    def __call__(self, h, batch: int, *, causal: bool, temperature=None):
        h = h + self.attn(self.norm1(h), batch, causal=causal, temperature=temperature)
        return h + self._mlp(h)

    def decode(self, h_t, t, cache, temperature=None):
        a, cache = self.attn.decode(self.norm1(h_t), t, cache, temperature)
        h_t = h_t + a
        return h_t + self._mlp(h_t), cache

    def decode_chunk(self, h, batch: int, t, cache, temperature=None):
        """``decode`` for ``n`` consecutive tokens per example, rows ``h`` (B*n, width)."""
        a, cache = self.attn.decode_chunk(self.norm1(h), batch, t, cache, temperature)
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
      qkv_init: ``'fused'`` (the q/k/v kernel drawn as one matrix) or ``'separate'`` (as
        three, ``Attention``'s docstring).
      final_norm: the LN before the output projection (False: none, as ml-tarflow).
      norm_epsilon: every LN's epsilon (default flax's; PyTorch's is 1e-5).
      gelu_approximate: the MLPs' GELU is the tanh approximation (False: exact, erf).
      context_bias: the context projection has a bias (False: a table of per-class rows).
      matmul_impl: ``'lax'`` (plain products, autodiff: forward mode works) or ``'gemm'``
        (every row product through ``dense``'s hand-written VJP, faster on XLA:CPU; reverse
        mode only). ``flows.nn.backend.resolve_matmul_impl`` turns ``'auto'`` into one.
      compute_dtype: ``'float32'`` or ``'bfloat16'``: the operand dtype of every matrix
        product (module docstring); ``flows.nn.backend.resolve_compute_dtype`` turns
        ``'auto'`` into one. ``self.compute_dtype`` holds the name, ``self.operand_dtype``
        None or bfloat16 (``operand_dtype``).
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
        qkv_init: str = "fused",
        final_norm: bool = True,
        norm_epsilon: float = 1e-6,
        gelu_approximate: bool = True,
        context_bias: bool = True,
        matmul_impl: str = "lax",
        compute_dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if matmul_impl not in ("lax", "gemm"):
            raise ValueError(f"matmul_impl must be 'lax' or 'gemm', got {matmul_impl!r}")
        self.gemm = matmul_impl == "gemm"
        self.compute_dtype = check_compute_dtype(compute_dtype)
        self.operand_dtype = operand_dtype(self.compute_dtype)
        self.causal = bool(causal)
        self.num_tokens = int(num_tokens)
        self.num_heads = int(num_heads)
        self.head_dim = width // num_heads
        self.proj_in = nnx.Linear(in_features, width, kernel_init=hidden_kernel_init, rngs=rngs)
        noise = jax.random.normal(rngs.params(), (num_tokens, width))
        self.positions = nnx.Param(position_std * noise)
        self.context_proj = (
            nnx.Linear(
                context_features,
                width,
                use_bias=context_bias,
                kernel_init=hidden_kernel_init,
                rngs=rngs,
            )
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
                    qkv_init=qkv_init,
                    gemm=self.gemm,
                    operand_dtype=self.operand_dtype,
                    norm_epsilon=norm_epsilon,
                    gelu_approximate=gelu_approximate,
                    rngs=rngs,
                )
                for _ in range(depth)
            ]
        )
        self.norm = nnx.LayerNorm(width, epsilon=norm_epsilon, rngs=rngs) if final_norm else None
        zeros = nnx.initializers.zeros_init()
        self.proj_out = nnx.Linear(width, out_features, kernel_init=zeros, rngs=rngs)

    def _embed(self, x, positions, context):
        b, t, _ = x.shape
        rows = dense(self.proj_in, x.reshape(b * t, -1), self.gemm, self.operand_dtype)
        h = rows.reshape(b, t, -1) + positions
        if self.context_proj is not None:
            if context is None:
                raise ValueError("this transformer is conditional: pass context")
            h = h + dense(self.context_proj, context, False, self.operand_dtype)[:, None, :]
        return h

    def __call__(self, x, context=None, attention_temperature=None):
        """The outputs (B, T, out_features) for the tokens ``x`` (B, T, in);
        ``attention_temperature``: None, or a scalar or (B,) array dividing each example's
        attention logits (TarFlow's guided forward map: the null branch's)."""
        if x.shape[1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} tokens, got {x.shape[1]}")
        b, t, _ = x.shape
        # Rows (B*T, width): every dense layer is one 2-D product (and so is its gradient).
        h = self._embed(x, self.positions[...], context).reshape(b * t, -1)
        for block in self.blocks:
            h = block(h, b, causal=self.causal, temperature=attention_temperature)
        out = dense(self.proj_out, self._final_norm(h), self.gemm, self.operand_dtype)
        return out.reshape(b, t, -1)

    def _final_norm(self, h):
        return h if self.norm is None else self.norm(h)

    # -- token by token (causal only) ---------------------------------------------------
    def init_cache(self, batch: int, dtype=jnp.float32):
        """Empty keys/values for every block: a list of (keys, values), each
        (batch, heads, T, head_dim)."""
        if not self.causal:
            raise ValueError("a key/value cache needs a causal transformer")
        shape = (batch, self.num_heads, self.num_tokens, self.head_dim)
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.blocks]

    def decode_step(self, x_t, t, cache, context=None, attention_temperature=None):
        """The output at position ``t`` (traced int) for the token ``x_t`` (B, 1, in)
        given the cache of tokens < t; equals ``self(x)[:, t:t+1]`` for the full sequence
        (``attention_temperature`` None or 1). ``attention_temperature``: a scalar or (B,)
        array dividing each example's attention logits in every layer. Returns
        ``(out (B, 1, out_features), cache)``."""
        position = jax.lax.dynamic_slice_in_dim(self.positions[...], t, 1, axis=0)
        h = self._embed(x_t, position, context)[:, 0]
        new_cache = []
        for block, c in zip(self.blocks, cache, strict=True):
            h, c = block.decode(h, t, c, attention_temperature)
            new_cache.append(c)
        out = dense(self.proj_out, self._final_norm(h), False, self.operand_dtype)
        return out[:, None], new_cache

    def decode_chunk(self, x, t, cache, context=None, attention_temperature=None):
        """The outputs at positions ``t .. t + n - 1`` (``t`` traced) for the tokens ``x``
        (B, n, in) given the cache of tokens < t; equals ``self(x_full)[:, t:t+n]``, and
        writes the n tokens' keys and values into the cache. Returns ``(out (B, n,
        out_features), cache)``. (TarFlow's Jacobi inverse updates a chunk of tokens at a
        time with it.) ``attention_temperature``: as ``decode_step``'s."""
        b, n, _ = x.shape
        positions = jax.lax.dynamic_slice_in_dim(self.positions[...], t, n, axis=0)
        h = self._embed(x, positions, context).reshape(b * n, -1)
        new_cache = []
        for block, c in zip(self.blocks, cache, strict=True):
            h, c = block.decode_chunk(h, b, t, c, attention_temperature)
            new_cache.append(c)
        out = dense(self.proj_out, self._final_norm(h), self.gemm, self.operand_dtype)
        return out.reshape(b, n, -1), new_cache
