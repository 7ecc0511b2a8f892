"""Glow's step of flow, and a stack of K identical steps run with ``lax.scan``.

A step is ``ActNorm -> permutation -> coupling`` (Glow, Sec. 3; the coupling is additive,
affine or a rational-quadratic spline, ``flows.bijectors.coupling.conv_coupling``). The K
steps of a level are created once with ``nnx.vmap`` (parameters stacked on a leading axis of
size K) and applied with ``lax.scan``, so the compiled program, and the compile time, do not
grow with K.

``backprop`` (``model.backprop``) chooses how the stack is differentiated. The names are one
vocabulary, ``BACKPROP``, each with one meaning in every family; a family accepts the ones
its module lists in ``BACKPROP_MODES`` (its default first), checked by ``check_backprop``.
All give the same gradients (up to rounding); they differ in what the backward pass keeps
and what it recomputes:

* ``'autodiff'``: plain reverse-mode autodiff of the scan; it keeps every step's activations
  for the backward pass, so training memory grows linearly with K.
* ``'checkpoint'``: ``jax.checkpoint`` on the scan body keeps only each step's input and
  recomputes the step's activations in the backward pass (memory still grows with K, by
  one input per step, not by the step's activations).
* ``'save_dots'``: ``jax.checkpoint`` on the scan body with the policy
  ``dots_with_no_batch_dims_saveable``: keeps the outputs of each step's unbatched matrix
  products and recomputes its elementwise work (layer norms, GELU, softmax). TarFlow's
  default: on XLA:CPU it is the fastest (stacking every activation of the scan's iterations
  for the backward pass costs more than recomputing the elementwise ops: 1.59 vs 2.06 CPU-s
  per batch of 64 at the MNIST setting) and uses the least memory after ``'checkpoint'``.
* ``'invertible'``: keeps only the stack's output and, in the backward pass, reconstructs each
  step's input from its output with the step's inverse (``flows.models.invertible_backprop``);
  memory does not grow with K. Gradients equal autodiff's up to the round trip's rounding.

Only the forward (data -> latent) direction, the one training differentiates, is affected;
the inverse (sampling) always runs the plain scan.

The scan carries ``(h, log_det)`` in one dtype: the widest float dtype of the input, the
context and the step parameters (``carry_dtype``). A model built with JAX's x64 mode on has
float64 parameters; float32 images fed to it are widened (exactly) before the scan rather
than promoted by the first step, which a scan carry does not allow.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from flows.bijectors import ActNorm, Bijector, Chain, Conv1x1, Conv1x1LU, Reverse, Shuffle
from flows.bijectors.coupling import conv_coupling
from flows.errors import ConfigError
from flows.models.invertible_backprop import invertible_scan

PERMUTATIONS = ("conv1x1_lu", "conv1x1", "shuffle", "reverse")
# model.backprop: how a stack of steps is differentiated (the module docstring).
BACKPROP = ("autodiff", "checkpoint", "save_dots", "invertible")


def check_backprop(backprop: str, supported: tuple[str, ...] = BACKPROP, family: str = "") -> str:
    """``backprop`` if it is one of the ``supported`` names of ``BACKPROP`` (those of the
    model class ``family``), else a one-line ``ConfigError`` naming them."""
    if isinstance(backprop, str) and backprop in supported:
        return backprop
    where = f" for {family}" if family else ""
    raise ConfigError(f"model.backprop must be one of {list(supported)}{where}, got {backprop!r}")


def carry_dtype(x, context, state):
    """``result_type`` of x, the context and every float leaf of ``state``: the dtype one step
    returns for an input of that dtype, so a scan carry of it keeps its type."""
    leaves = jax.tree.leaves((context, state))
    floats = [v.dtype for v in leaves if jnp.issubdtype(v.dtype, jnp.inexact)]
    return jnp.result_type(x.dtype, *floats)


def make_permutation(kind: str, channels: int, *, rngs: nnx.Rngs) -> Bijector:
    if kind == "conv1x1_lu":
        return Conv1x1LU(channels, rngs=rngs)
    if kind == "conv1x1":
        return Conv1x1(channels, rngs=rngs)
    if kind == "shuffle":
        return Shuffle(channels, rngs=rngs)
    if kind == "reverse":
        return Reverse(channels)
    raise ConfigError(f"unknown permutation {kind!r}; choose one of {list(PERMUTATIONS)}")


def glow_step(
    channels: int,
    hidden_channels: int,
    *,
    coupling: str = "affine",
    permutation: str = "conv1x1_lu",
    context_features: int | None = None,
    compute_dtype: str = "float32",
    remat: bool = False,
    conv_impl: str = "auto",
    spline_num_segments: int = 8,
    spline_bound: float = 3.0,
    rngs: nnx.Rngs,
) -> Chain:
    """One step of flow: ActNorm -> permutation -> coupling (``compute_dtype``, ``remat``,
    ``conv_impl``: the coupling network's, see ``flows.nn.conditioners.ConvConditioner``;
    ``spline_num_segments``, ``spline_bound``: the spline's, used by ``coupling='spline'``
    only, see ``flows.bijectors.spline``)."""
    spline = {}
    if coupling == "spline":
        spline = {"num_segments": spline_num_segments, "bound": spline_bound}
    return Chain(
        [
            ActNorm(channels),
            make_permutation(permutation, channels, rngs=rngs),
            conv_coupling(
                coupling,
                channels,
                hidden_channels,
                context_features=context_features,
                compute_dtype=compute_dtype,
                remat=remat,
                conv_impl=conv_impl,
                rngs=rngs,
                **spline,
            ),
        ]
    )


class StepStack(Bijector):
    """K copies of a step, parameters stacked on axis 0, applied in order with ``lax.scan``.

    Forward applies step 0 first; the inverse runs the scan in reverse. ``backprop``: one
    of ``BACKPROP`` (see the module docstring).
    """

    def __init__(
        self,
        make_step: Callable[[nnx.Rngs], Bijector],
        num_steps: int,
        *,
        rngs: nnx.Rngs,
        backprop: str = "autodiff",
    ):
        check_backprop(backprop)
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")

        # Under jit, the K initialisations (QR, LU, ...) compile once as one program instead
        # of dispatching (and compiling) each small op eagerly.
        @nnx.jit
        @nnx.split_rngs(splits=num_steps)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs):
            return make_step(rngs)

        self.steps = create(rngs)
        self.num_steps = num_steps
        self.backprop = backprop

    def _split(self, x, context):
        """``(graphdef, state, x)`` with x in the scan's carry dtype (``carry_dtype``)."""
        graphdef, state = nnx.split(self.steps)
        return graphdef, state, x.astype(carry_dtype(x, context, state))

    def scan(self, apply, x, context, reverse: bool, backprop: str = "autodiff"):
        """``apply(step, h, context) -> (h, log|det|)`` through every step, in order (or in
        reverse), as one ``lax.scan``, its body differentiated as ``backprop`` says
        (``'autodiff'``, ``'checkpoint'`` or ``'save_dots'``); returns ``(h, summed
        log|det|)``. Forward and inverse are this with the steps' own methods; a family calls
        it with another method of its steps (TarFlow: the guided inverse)."""
        graphdef, state, x = self._split(x, context)

        def body(carry, step_state):
            h, log_det = carry
            y, ld = apply(nnx.merge(graphdef, step_state), h, context)
            return (y, log_det + ld), None

        if backprop == "checkpoint":
            body = jax.checkpoint(body)
        elif backprop == "save_dots":
            policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
            body = jax.checkpoint(body, policy=policy)
        init = (x, jnp.zeros(x.shape[:1], x.dtype))
        (y, log_det), _ = jax.lax.scan(body, init, state, reverse=reverse)
        return y, log_det

    def map_steps(self, apply, x, context, per_step, reverse: bool):
        """``apply(step, h, context, per_step_k) -> (h, out)`` through every step, in order
        (or in reverse), as one ``lax.scan``: ``per_step`` is a pytree whose leaves have one
        row per step (row k goes to step k), and the result is ``(h, outs)`` with ``outs``
        stacked on a leading axis in step order (0 .. K-1, whichever way the scan ran).
        For what a step returns besides its output (TarFlow: Jacobi iterations)."""
        graphdef, state, x = self._split(x, context)

        def body(h, xs):
            step_state, row = xs
            return apply(nnx.merge(graphdef, step_state), h, context, row)

        return jax.lax.scan(body, x, (state, per_step), reverse=reverse)

    def forward_and_log_det(self, x, *, context=None):
        if self.backprop == "invertible":
            graphdef, state, x = self._split(x, context)
            return invertible_scan(graphdef, state, x, context)
        return self.scan(
            lambda s, h, c: s.forward_and_log_det(h, context=c), x, context, False, self.backprop
        )

    def inverse_and_log_det(self, z, *, context=None):
        return self.scan(lambda s, h, c: s.inverse_and_log_det(h, context=c), z, context, True)

    def initialize(self, x, *, context=None):
        graphdef, state, x = self._split(x, context)

        def body(h, step_state):
            step = nnx.merge(graphdef, step_state)
            y = step.initialize(h, context=context)
            return y, nnx.state(step)

        y, new_state = jax.lax.scan(body, x, state)
        nnx.update(self.steps, new_state)
        return y
