"""Invertible 1x1 convolution (Glow): a learned C x C linear map applied at every position.

Forward: ``y[..., :] = W x[..., :]`` (channels on the last axis).
log|det dy/dx| = P * log|det W|, P the number of positions (H * W for images, 1 for vectors).

* ``Conv1x1``: W stored as is, initialised to a random rotation. log|det W| by ``slogdet``
  (an LU factorisation with partial pivoting) and the inverse by ``solve``, which stay finite
  and accurate for the small C of flows; computed in float64 when JAX's x64 mode is on.
* ``Conv1x1LU``: ``W = P L (U + diag(sign_s * exp(log_s)))`` with P a fixed permutation,
  L unit lower-triangular, U strictly upper-triangular. log|det W| = sum(log_s): exact and
  O(C); the inverse applies ``W^{-1}``, computed once per call from the C x C ``W``.

Every matrix product here (applying W or W^{-1}, the product ``P L U``, the block-triangular
inverse) runs at ``Precision.HIGHEST`` (``EXACT``) on every backend: these products mix the
dimensions of the flow's map itself, and at a backend's fast default (TF32 on recent NVIDIA
GPUs, bf16 passes on TPU) the map computed would differ from the one whose log-det
(``slogdet(W)``, ``sum log|s|``) is counted. XLA:CPU computes float32 products exactly
anyway, so this costs nothing there. (The coupling networks may use the fast default: a
coupling stays exactly triangular whatever its network computes.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from flax import nnx

from flows.bijectors.base import EXACT, Bijector, Buffer, num_positions


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` at ``EXACT`` precision."""
    return jnp.matmul(a, b, precision=EXACT)


def random_rotation(key, channels: int) -> jax.Array:
    """A random orthogonal matrix with determinant +1 (QR of a Gaussian matrix)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (channels, channels)))
    q = q * jnp.sign(jnp.diag(r))[None, :]
    sign = jnp.sign(jnp.linalg.det(q))
    return q.at[:, 0].multiply(sign)


def triangular_inverse(t: jax.Array, *, lower: bool) -> jax.Array:
    """Inverse of a triangular matrix by recursive 2x2 block inversion (LAPACK's recursive
    TRTRI): ``[[A, 0], [B, D]]^{-1} = [[A^{-1}, 0], [-D^{-1} B A^{-1}, D^{-1}]]`` (and the
    transposed form for upper). Only matrix products (at ``EXACT`` precision), no sequential
    solve; static shapes."""
    c = t.shape[0]
    if c == 1:
        return 1.0 / t
    k = c // 2
    a_inv = triangular_inverse(t[:k, :k], lower=lower)
    d_inv = triangular_inverse(t[k:, k:], lower=lower)
    if lower:
        off = -matmul(matmul(d_inv, t[k:, :k]), a_inv)
        top = jnp.concatenate([a_inv, jnp.zeros((k, c - k), t.dtype)], axis=1)
        bottom = jnp.concatenate([off, d_inv], axis=1)
    else:
        off = -matmul(matmul(a_inv, t[:k, k:]), d_inv)
        top = jnp.concatenate([a_inv, off], axis=1)
        bottom = jnp.concatenate([jnp.zeros((c - k, k), t.dtype), d_inv], axis=1)
    return jnp.concatenate([top, bottom], axis=0)


def _apply(x, w):
    """``y[..., d] = sum_c w[d, c] x[..., c]`` at every position, at ``EXACT`` precision."""
    return jnp.einsum("...c,dc->...d", x, w, precision=EXACT)


class Conv1x1(Bijector):
    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.weight = nnx.Param(random_rotation(rngs.params(), channels))

    def forward_and_log_det(self, x, *, context=None):
        w = self.weight[...]
        log_abs_det = jnp.linalg.slogdet(w)[1]
        ld = jnp.broadcast_to(num_positions(x) * log_abs_det, x.shape[:1]).astype(x.dtype)
        return _apply(x, w), ld

    def inverse_and_log_det(self, z, *, context=None):
        w = self.weight[...]
        log_abs_det = jnp.linalg.slogdet(w)[1]
        ld = jnp.broadcast_to(-num_positions(z) * log_abs_det, z.shape[:1]).astype(z.dtype)
        # x = W^{-1} z for every position: W^{-1} by one C x C solve (an LU factorisation
        # and triangular solves: no product at a reduced precision), then one product.
        w_inv = jnp.linalg.solve(w, jnp.eye(w.shape[0], dtype=w.dtype))
        return _apply(z, w_inv), ld


class Conv1x1LU(Bijector):
    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        w0 = random_rotation(rngs.params(), channels)
        p, lower, upper = jsl.lu(w0)
        s = jnp.diag(upper)
        self.permutation = Buffer(p)
        self.sign_s = Buffer(jnp.sign(s))
        self.lower = nnx.Param(jnp.tril(lower, -1))
        self.upper = nnx.Param(jnp.triu(upper, 1))
        self.log_s = nnx.Param(jnp.log(jnp.abs(s)))

    def _factors(self):
        c = self.log_s.shape[-1]
        eye = jnp.eye(c, dtype=self.log_s.dtype)
        lower = jnp.tril(self.lower[...], -1) + eye
        upper = jnp.triu(self.upper[...], 1) + jnp.diag(self.sign_s[...] * jnp.exp(self.log_s[...]))
        return self.permutation[...], lower, upper

    def weight(self) -> jax.Array:
        p, lower, upper = self._factors()
        return matmul(matmul(p, lower), upper)

    def _log_det(self, x, sign):
        ld = sign * num_positions(x) * jnp.sum(self.log_s[...])
        return jnp.broadcast_to(ld, x.shape[:1]).astype(x.dtype)

    def forward_and_log_det(self, x, *, context=None):
        return _apply(x, self.weight()), self._log_det(x, 1.0)

    def inverse_weight(self) -> jax.Array:
        """``W^{-1} = U^{-1} L^{-1} P^T``, a C x C matrix computed once per call; applying it
        is then one matrix product over all positions (solving at every position is ~10x
        slower on CPU). The triangular inverses are recursive 2x2 block inversions, i.e.
        small matrix products: XLA:CPU expands triangular solves into slow loops (~10 ms
        for C = 48, more than the rest of a step)."""
        p, lower, upper = self._factors()
        u_inv = triangular_inverse(upper, lower=False)
        return matmul(matmul(u_inv, triangular_inverse(lower, lower=True)), p.T)

    def inverse_and_log_det(self, z, *, context=None):
        # W = P L U  =>  x = U^{-1} L^{-1} P^T z at every position.
        return _apply(z, self.inverse_weight()), self._log_det(z, -1.0)
