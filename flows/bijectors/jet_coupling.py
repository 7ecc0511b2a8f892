"""Jet's layers (Kolesnikov et al. 2024): affine couplings of tokens (``flows.bijectors.squeeze.
Patchify``) whose networks are transformers (ViTs).

* ``JetCoupling``: an affine coupling of tokens ``x`` (T, d), split by a fixed projection P
  (a permutation matrix, a buffer that is never trained):

      channels kind:  [x1 | x2] = x P          (P: d x d; x1 the first d//2 features)
      spatial kind:   [x1 ; x2] = P^T x        (P: T x T; x1 the first T//2 tokens)

      (b, r) = net(x1, context)                 the shared Transformer, zero-initialised output
      s      = scale_factor * sigmoid(r)        scale_factor = 2: s = 1 at r = 0 (identity)
      y1 = x1,   y2 = (x2 + b) * s
      log|det| = sum log s = sum [log_sigmoid(r) + log scale_factor]

  and the output is merged back by the transposed projection (``[y1 | y2] P^T`` or
  ``P [y1 ; y2]``). P is orthogonal (|det P| = 1), so only the coupling contributes to the
  log-det. Inverse: ``x2 = y2 / s - b``, with the same (b, r) since ``y1 = x1``.

  With ``spatial_cut`` (big_vision's layout) a spatial coupling's network does not see the
  T/2 tokens of x1 with d features each but every one of them cut into two consecutive
  tokens of d/2 features (row-major reshape (T/2, d) -> (T, d/2)), and its b and r are
  reshaped back to x2's (T/2, d). Then spatial and channel couplings' networks both map T
  tokens of d/2 features to T tokens of d (the reference stacks every coupling's parameters
  on one axis, so they must).

  Spatial splits of the (H/p) x (W/p) grid of tokens: ``'checkerboard'`` (x1: the tokens
  whose row + column is even), ``'vstripes'`` (even columns), ``'hstripes'`` (even rows),
  each with ``'-inv'`` for the complement (x1 and x2 swapped). The channel split is a
  random permutation of the d features (``channel_projection(seed, d)``).

  The projection products (``x P`` and its transpose) mix the flow's dimensions outside the
  network, so they run at ``Precision.HIGHEST`` on every backend (GPU TF32 and TPU bf16
  passes would otherwise round the map whose log-det is counted); the network's products
  use the backend default, or bf16 operands summed in float32 with ``compute_dtype=
  'bfloat16'`` (a coupling stays exactly triangular whatever its net computes, and the
  inverse runs the same net on the same x1).

Classifier-free guidance (``inverse_and_log_det(..., guidance=w, null_context=u)``): the
network runs on the label context c and on the "no label" context u (all-zero class
weights) in one batch, and the inverse uses ``(1 + w) net(x1, c) - w net(x1, u)`` for both
the shift b and the raw scale r; the returned log-det is that of the guided map. Since x1
passes through unchanged, the guided map is itself a coupling: ``forward_and_log_det(...,
guidance=w, null_context=u)`` is its forward map, so the guided model has an exact density.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flows.bijectors.base import EXACT, Bijector, Buffer
from flows.nn.transformer import Transformer

COUPLING_KINDS = ("channels", "spatial")
CHANNEL_SPLITS = ("random",)
SPATIAL_SPLITS = tuple(
    f"{base}{suffix}"
    for base in ("checkerboard", "vstripes", "hstripes")
    for suffix in ("", "-inv")
)


def channel_projection(seed, features: int) -> jax.Array:
    """A random d x d permutation matrix P (``x P`` permutes the features), drawn by NumPy
    from ``seed`` (an int or a sequence of ints), so it is a constant under tracing."""
    perm = np.random.default_rng(seed).permutation(features)
    p = np.zeros((features, features), np.float32)
    p[perm, np.arange(features)] = 1.0
    return jnp.asarray(p)


def spatial_projection(kind: str, grid: tuple[int, int]) -> jax.Array:
    """The T x T permutation matrix P of a spatial split of the (nh, nw) token grid:
    ``P^T x`` lists the x1 tokens first (in raster order), then the x2 tokens."""
    nh, nw = grid
    n = nh * nw
    rows, cols = np.divmod(np.arange(n), nw)
    base = kind.removesuffix("-inv")
    if base == "checkerboard":
        first = (rows + cols) % 2 == 0
    elif base == "vstripes":
        first = cols % 2 == 0
    elif base == "hstripes":
        first = rows % 2 == 0
    else:
        raise ValueError(f"unknown spatial split {kind!r}; choose one of {list(SPATIAL_SPLITS)}")
    if kind.endswith("-inv"):
        first = ~first
    order = np.concatenate([np.flatnonzero(first), np.flatnonzero(~first)])
    if np.count_nonzero(first) != n // 2:
        raise ValueError(f"spatial split {kind!r} of a {nh}x{nw} grid is not into halves")
    p = np.zeros((n, n), np.float32)
    p[order, np.arange(n)] = 1.0
    return jnp.asarray(p)


class JetCoupling(Bijector):
    """An affine coupling of tokens split by a fixed projection; see the module docstring.

    Args:
      kind: ``'channels'`` (split the d features) or ``'spatial'`` (split the T tokens).
      num_tokens, features: T and d of the tokens it acts on.
      projection: the split's permutation matrix, d x d (channels) or T x T (spatial).
      width, depth, num_heads, mlp_ratio: the Transformer's.
      scale_factor: s = scale_factor * sigmoid(r); 2 makes the zero-initialised coupling
        the identity.
      context_features: size of the label context, or None.
      spatial_cut: a spatial coupling's network sees x1's tokens cut in two (module
        docstring); needs an even d. Ignored by channel couplings.
      qkv_init: the Transformer's (``'fused'`` or ``'separate'``).
      compute_dtype: the Transformer's matrix-product dtype, ``'float32'`` or
        ``'bfloat16'``.
      matmul_impl: the Transformer's row products, ``'lax'`` or ``'gemm'``.
    """

    def __init__(
        self,
        kind: str,
        num_tokens: int,
        features: int,
        projection: jax.Array,
        *,
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: int = 4,
        scale_factor: float = 2.0,
        context_features: int | None = None,
        spatial_cut: bool = False,
        qkv_init: str = "fused",
        compute_dtype: str = "float32",
        matmul_impl: str = "lax",
        rngs: nnx.Rngs,
    ):
        if kind not in COUPLING_KINDS:
            raise ValueError(f"unknown coupling kind {kind!r}; choose one of {COUPLING_KINDS}")
        self.kind = kind
        size = features if kind == "channels" else num_tokens
        if size < 2:
            raise ValueError(f"a {kind} coupling needs at least 2 {kind}, got {size}")
        if projection.shape[-2:] != (size, size):
            raise ValueError(f"expected a {size}x{size} projection, got {projection.shape}")
        self.projection = Buffer(jnp.asarray(projection, jnp.float32))
        self.split = size // 2
        self.cut = kind == "spatial" and bool(spatial_cut)
        if kind == "channels":
            net_in, net_out, net_tokens = self.split, features - self.split, num_tokens
        elif self.cut:
            if features % 2:
                raise ValueError(f"a cut spatial coupling needs an even d, got {features}")
            net_in, net_out, net_tokens = features // 2, features // 2, 2 * self.split
        else:
            net_in, net_out, net_tokens = features, features, self.split
        self.scale_factor = float(scale_factor)
        self.net = Transformer(
            net_in,
            2 * net_out,
            num_tokens=net_tokens,
            width=width,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            context_features=context_features,
            # big_vision's ViT initialisation, which Jet uses: positions N(0, 1/width), the
            # blocks' kernels Xavier-uniform. Digits (jet_digits.py), 3000 steps: 2.134 test
            # bits/dim against 2.175 with the transformer's defaults (0.02, LeCun-normal).
            position_std=1 / math.sqrt(width),
            block_kernel_init=nnx.initializers.xavier_uniform(),
            qkv_init=qkv_init,
            compute_dtype=compute_dtype,
            matmul_impl=matmul_impl,
            rngs=rngs,
        )

    # -- the fixed split, at EXACT precision --------------------------------------------
    def _split(self, x):
        p = self.projection[...].astype(x.dtype)
        if self.kind == "channels":
            h = jnp.einsum("btk,km->btm", x, p, precision=EXACT)
            return h[..., : self.split], h[..., self.split :]
        h = jnp.einsum("btk,tm->bmk", x, p, precision=EXACT)
        return h[:, : self.split], h[:, self.split :]

    def _merge(self, x1, x2):
        p = self.projection[...].astype(x1.dtype)
        if self.kind == "channels":
            h = jnp.concatenate([x1, x2], axis=-1)
            return jnp.einsum("btm,km->btk", h, p, precision=EXACT)
        h = jnp.concatenate([x1, x2], axis=1)
        return jnp.einsum("bmk,tm->btk", h, p, precision=EXACT)

    # -- the coupling ---------------------------------------------------------------------
    def _shift_and_raw(self, x1, context, guidance=0.0, null_context=None):
        b, t, d = x1.shape
        h = x1.reshape(b, 2 * t, d // 2) if self.cut else x1
        if guidance:
            if context is None or null_context is None:
                raise ValueError("guidance needs a context and a null context")
            out = self.net(jnp.concatenate([h, h]), jnp.concatenate([context, null_context]))
            out = (1.0 + guidance) * out[:b] - guidance * out[b:]
        else:
            out = self.net(h, context)
        out = out.astype(x1.dtype)
        half = out.shape[-1] // 2
        shift, raw = out[..., :half], out[..., half:]
        if self.cut:
            shift, raw = shift.reshape(b, t, d), raw.reshape(b, t, d)
        return shift, raw

    def _log_scale(self, raw):
        return jax.nn.log_sigmoid(raw) + math.log(self.scale_factor)

    def forward_and_log_det(self, x, *, context=None, guidance=0.0, null_context=None):
        """The forward map; with ``guidance`` w > 0 that of the guided coupling (the inverse
        of the guided inverse: the same guided shift and scale, read off x1 = y1)."""
        x1, x2 = self._split(x)
        shift, raw = self._shift_and_raw(x1, context, guidance, null_context)
        log_s = self._log_scale(raw)
        y2 = (x2 + shift) * jnp.exp(log_s)
        return self._merge(x1, y2), jnp.sum(log_s, axis=(1, 2))

    def inverse_and_log_det(self, z, *, context=None, guidance=0.0, null_context=None):
        """The inverse; with ``guidance`` w > 0 the guided inverse (module docstring)."""
        z1, z2 = self._split(z)
        shift, raw = self._shift_and_raw(z1, context, guidance, null_context)
        log_s = self._log_scale(raw)
        x2 = z2 * jnp.exp(-log_s) - shift
        return self._merge(z1, x2), -jnp.sum(log_s, axis=(1, 2))


class CouplingGroup(Bijector):
    """A fixed sequence of Jet couplings applied in order (one repeat of the coupling
    pattern), with a guided inverse."""

    def __init__(self, couplings):
        self.couplings = nnx.List(list(couplings))

    def forward_and_log_det(self, x, *, context=None, guidance=0.0, null_context=None):
        log_det = jnp.zeros(x.shape[:1], x.dtype)
        for c in self.couplings:
            x, ld = c.forward_and_log_det(
                x, context=context, guidance=guidance, null_context=null_context
            )
            log_det = log_det + ld
        return x, log_det

    def inverse_and_log_det(self, z, *, context=None, guidance=0.0, null_context=None):
        log_det = jnp.zeros(z.shape[:1], z.dtype)
        for c in reversed(self.couplings):
            z, ld = c.inverse_and_log_det(
                z, context=context, guidance=guidance, null_context=null_context
            )
            log_det = log_det + ld
        return z, log_det
