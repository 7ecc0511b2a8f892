"""Jacobi inversion of an autoregressive affine flow, and the choice between it and decoding
token by token.

An autoregressive affine map of tokens ``x_0 .. x_{T-1}`` (TarFlow's block, in its own token
order) is

    z_t = (x_t - mu_t(x_{<t})) exp(-alpha_t(x_{<t})),      mu_0 = alpha_0 = 0,

so its inverse ``x_t = z_t exp(alpha_t(x_{<t})) + mu_t(x_{<t})`` is the fixed point of

    x^{k+1} = z * exp(alpha(x^k)) + mu(x^k)                 (every token at once)

from any start ``x^0`` (here the latent, ``x^0 = z``; token 0 is exact from the start).
Token t of ``x^k`` is exact once ``k >= t``: T - 1 updates give the inverse exactly (in
exact arithmetic), and in practice the update stops changing much sooner. Each update is one
parallel pass of the network over the tokens instead of T - 1 passes over one token each.

``solve_autoregressive`` runs it in chunks of ``chunk`` consecutive tokens (all T tokens: one
chunk), Gauss-Seidel over the chunks: chunk j is iterated with the tokens before it final (a
key/value cache holds them), until the largest change of a token in an update,
``max |x^{k+1} - x^k|`` over the batch, is below ``tol`` or after ``max_iters`` updates
(None: the chunk's size, after which it is exact). A chunk whose end passes T starts at T -
chunk instead (it overlaps the chunk before, whose tokens are already at their fixed point),
so every chunk has one size and the chunks are a ``lax.fori_loop`` around a
``lax.while_loop``: one compiled program.

A sampler (``Sampler``) says, per block, ``'sequential'`` (the cached token-by-token decoder)
or ``'jacobi'``, with Jacobi's tolerance, update limit and chunk size. ``'auto'``
(``choose_methods``) takes, for each block, whichever of the two took less time on the
batch, on this backend: measured, because what is faster depends on the model's size, the
batch (one token of a batch of 1 leaves the machine idle, a batch of 64 may not), the backend
and how many updates the block needs (trained blocks differ: GS-Jacobi finds one block in the
stack converging far slower than the others).
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp

from flows.errors import ConfigError

SAMPLERS = ("sequential", "jacobi", "auto")
METHODS = ("sequential", "jacobi")  # what a block is inverted with
DEFAULT_TOL = 1e-4  # max |x^{k+1} - x^k| on the tokens' scale (the image's: [-1, 1))


@dataclasses.dataclass(frozen=True)
class Sampler:
    """How an autoregressive flow's blocks are inverted (hashable: a static jit argument).

    methods: one of ``METHODS`` for every block, or a tuple of them, one per block in the
      model's block order (block 0 is the one next to the image, decoded last).
    tol: Jacobi stops a chunk when no token moved more than this in an update (>= 0).
    max_iters: at most this many Jacobi updates per chunk (None: the chunk's size, exact).
    chunk: tokens updated together (None: all of a block's tokens).
    reason: why (``'auto'``'s measurements); not part of the sampler's identity.
    """

    methods: str | tuple[str, ...] = "sequential"
    tol: float = DEFAULT_TOL
    max_iters: int | None = None
    chunk: int | None = None
    reason: str = dataclasses.field(default="", compare=False)

    def block_methods(self, num_blocks: int) -> tuple[str, ...]:
        """The method of each of ``num_blocks`` blocks, in block order."""
        if isinstance(self.methods, str):
            return (self.methods,) * num_blocks
        if len(self.methods) != num_blocks:
            raise ConfigError(
                f"the sampler names {len(self.methods)} blocks' methods; the model has "
                f"{num_blocks} blocks"
            )
        return tuple(self.methods)

    def uses_jacobi(self) -> bool:
        methods = (self.methods,) if isinstance(self.methods, str) else self.methods
        return "jacobi" in methods


def make_sampler(
    name: str = "sequential",
    *,
    tol: float = DEFAULT_TOL,
    max_iters: int | None = None,
    chunk: int | None = None,
) -> Sampler:
    """A ``Sampler`` for every block from a name of ``METHODS``, checked: one-line
    ``ConfigError`` for a bad name, a tolerance that is not a finite number >= 0, or an
    update limit or chunk size that is not a positive integer. ``'auto'`` is resolved by the
    model (``DensityModel.choose_sampler``), not here."""
    if name not in METHODS:
        raise ConfigError(f"sampler must be one of {list(METHODS)}, got {name!r}")
    if (
        isinstance(tol, bool)
        or not isinstance(tol, int | float)
        or not (math.isfinite(tol) and tol >= 0)
    ):
        raise ConfigError(f"jacobi_tol must be a finite number >= 0, got {tol}")
    for field, value in (("jacobi_max_iters", max_iters), ("jacobi_chunk", chunk)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"{field} must be a positive integer, got {value}")
    return Sampler(name, float(tol), max_iters, chunk)


def solve_autoregressive(predict, z, state, *, chunk: int, tol: float, max_iters: int | None):
    """The inverse ``x`` of the autoregressive affine map above by Jacobi updates in chunks.

    ``z``: (B, T, d) in the block's token order. ``predict(x_chunk, s, state) -> (mu, alpha,
    state)``: for the tokens ``x_chunk`` (B, chunk, d) at positions ``s .. s + chunk - 1``
    (``s`` traced) and the positions before them (in ``state``, e.g. a key/value cache, which
    ``predict`` writes these positions into), the shift and log-scale (B, chunk, d) of the
    tokens ``s + 1 .. s + chunk``: each position predicts the token after it, and the last
    position's prediction (token T, which does not exist) is ignored.

    Returns ``(x, log_det, iterations, converged)``: the inverse, ``sum alpha`` per example
    (the log-det of the inverse, with the final updates' alpha), the updates run (summed over
    the chunks, int32) and whether every chunk stopped below ``tol`` or ran to its size.
    """
    b, t_max, d = z.shape
    if not 1 <= chunk <= t_max:
        raise ConfigError(f"jacobi_chunk must be in 1..{t_max} (the tokens), got {chunk}")
    limit = chunk if max_iters is None else min(max_iters, chunk)
    num_chunks = -(-t_max // chunk)
    # One dummy token past the end: the last position's prediction lands there.
    pad = jnp.zeros((b, 1, d), z.dtype)
    z_ext = jnp.concatenate([z, pad], axis=1)
    real = jnp.arange(t_max + 1) < t_max
    tol = jnp.asarray(tol, z.dtype)

    def one_chunk(j, carry):
        x, alpha_all, state, iterations, converged = carry
        s = jnp.minimum(j * chunk, t_max - chunk)
        z_next = jax.lax.dynamic_slice_in_dim(z_ext, s + 1, chunk, axis=1)
        mask = jax.lax.dynamic_slice_in_dim(real, s + 1, chunk)[None, :, None]

        def not_done(c):
            k, change = c[3], c[4]
            return (k < limit) & (change >= tol)

        def update(c):
            x, alpha_all, state, k, _ = c
            x_in = jax.lax.dynamic_slice_in_dim(x, s, chunk, axis=1)
            mu, alpha, state = predict(x_in, s, state)
            new = z_next * jnp.exp(alpha) + mu
            old = jax.lax.dynamic_slice_in_dim(x, s + 1, chunk, axis=1)
            change = jnp.max(jnp.where(mask, jnp.abs(new - old), 0))
            x = jax.lax.dynamic_update_slice_in_dim(x, new, s + 1, axis=1)
            alpha_all = jax.lax.dynamic_update_slice_in_dim(alpha_all, alpha, s + 1, axis=1)
            return x, alpha_all, state, k + 1, change

        init = (x, alpha_all, state, jnp.int32(0), jnp.asarray(jnp.inf, z.dtype))
        x, alpha_all, state, k, change = jax.lax.while_loop(not_done, update, init)
        done = (change < tol) | (k >= chunk)
        return x, alpha_all, state, iterations + k, converged & done

    init = (z_ext, jnp.zeros_like(z_ext), state, jnp.int32(0), jnp.bool_(True))
    x, alpha_all, _, iterations, converged = jax.lax.fori_loop(0, num_chunks, one_chunk, init)
    log_det = jnp.sum(alpha_all[:, :t_max], axis=(1, 2))
    return x[:, :t_max], log_det, iterations, converged


def best_time(fn, *, repeats: int = 3, budget_s: float = 1.0):
    """``(fn(), seconds)``: the least wall time of up to ``repeats`` calls of ``fn`` (which
    returns JAX arrays; a program compiled ahead of time, so no call is spent compiling),
    fewer once the calls have taken ``budget_s`` (a slow call is made once); the result is
    the last call's."""
    best, spent, out = math.inf, 0.0, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        seconds = time.perf_counter() - start
        best, spent = min(best, seconds), spent + seconds
        if spent >= budget_s:
            break
    return out, best


def choose_methods(sequential_s: float, jacobi_s, iterations, *, backend: str, batch: int):
    """``'auto'``'s choice from measured times: ``(methods, reason)``, ``methods`` a tuple in
    block order, ``'jacobi'`` for a block whose Jacobi inverse took less time than the
    sequential one (``sequential_s``: every block has the same sequential cost), else
    ``'sequential'``; ``jacobi_s`` and ``iterations`` per block, in block order."""
    methods = tuple("jacobi" if t < sequential_s else "sequential" for t in jacobi_s)
    parts = [
        f"block {k}: {m} (jacobi {1e3 * t:.3g} ms, {int(n)} updates)"
        for k, (m, t, n) in enumerate(zip(methods, jacobi_s, iterations, strict=True))
    ]
    reason = (
        f"auto on {backend}, batch {batch}: sequential {1e3 * sequential_s:.3g} ms per block; "
        + "; ".join(parts)
    )
    return methods, reason


__all__ = [
    "DEFAULT_TOL",
    "METHODS",
    "SAMPLERS",
    "Sampler",
    "best_time",
    "choose_methods",
    "make_sampler",
    "solve_autoregressive",
]
