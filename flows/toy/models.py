"""Flows for dequantized tables: densities on the unit cube ``[0, 1]^D``.

A table's dequantized density is piecewise constant: constant on each cell, with jumps at
cell edges and zeros on empty cells. The toy flows are built to represent exactly that family
closely and to be normalised on the cube by construction:

    x in [0,1]^D --Shift(-1/2)--> [-1/2, 1/2]^D --T--> [-1/2, 1/2]^D --Shift(1/2), Probit--> R^D

``T`` is a stack of monotone rational-quadratic splines on ``[-1/2, 1/2]`` (elementwise, and
couplings whose knots come from an MLP of the other coordinates); each maps the cube onto
itself. ``Probit`` is the standard normal quantile, so with a standard normal base
``log p(x) = log|det T'(x)|`` exactly: the density lives on the cube and integrates to 1 there
(no mass leaks outside, which a Logit layer followed by a Gaussian-tailed flow would lose or
misplace near the cube's faces). At initialisation every spline is the identity and the model
is the uniform density.

* ``joint_flow(D)``: unconditional over all D axes of the table, ``p(x, y)``.
* ``conditional_flow(D, num_classes)``: ``p(x | y)`` for the D non-label axes, the one-hot
  label as context. For D = 1 it is a stack of elementwise splines whose knots are a
  zero-initialised linear map of the label (so each label has a spline of its own).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from flows.bijectors import Chain, Probit, Reverse, Shift
from flows.bijectors.base import Bijector
from flows.bijectors.spline import RationalQuadraticSpline, spline_coupling
from flows.models.base import latent_log_prob


class ToyFlow(nnx.Module):
    """A density on the unit cube: ``log p(x) = sum log N(z; 0, I) + log|det dz/dx|``."""

    def __init__(self, bijector: Bijector, num_dims: int, context_features: int | None = None):
        self.bijector = bijector
        self.num_dims = num_dims
        self.context_features = context_features

    def log_prob(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        """Log density (nats, unit scale) of x, shape ``(batch,)``."""
        z, log_det = self.bijector.forward_and_log_det(x, context=context)
        return latent_log_prob(z, log_det)

    def sample(self, key: jax.Array, num: int, context: jax.Array | None = None) -> jax.Array:
        z = jax.random.normal(key, (num, self.num_dims))
        return self.bijector.inverse(z, context=context)


def _spline_kwargs(config):
    return dict(
        num_segments=config.num_segments,
        bound=0.5,
        min_bin_width=config.min_bin_width,
        min_bin_height=config.min_bin_height,
        min_derivative=config.min_derivative,
    )


def _elementwise(num_dims, config, context_features=None, rngs=None):
    kw = _spline_kwargs(config)
    return RationalQuadraticSpline(
        num_dims,
        kw.pop("num_segments"),
        kw.pop("bound"),
        context_features=context_features,
        rngs=rngs,
        **kw,
    )


def _couplings(num_dims, config, context_features, rngs):
    layers = []
    for _ in range(config.num_couplings):
        layers.append(
            spline_coupling(
                num_dims,
                config.hidden_features,
                network="mlp",
                num_hidden_layers=config.num_hidden_layers,
                context_features=context_features,
                rngs=rngs,
                **_spline_kwargs(config),
            )
        )
        layers.append(Reverse(num_dims))
    return layers


def unit_cube_flow(core: list[Bijector]) -> Chain:
    """``Shift(-1/2) -> core -> Shift(1/2) -> Probit``: maps of ``[-1/2, 1/2]^D`` onto itself
    become a bijection of the unit cube onto R^D (see the module docstring)."""
    return Chain([Shift(-0.5), *core, Shift(0.5), Probit()])


def joint_flow(num_dims: int, config, *, rngs: nnx.Rngs) -> ToyFlow:
    """Unconditional flow on ``[0,1]^num_dims``: elementwise spline, then ``num_couplings``
    spline couplings (each followed by a Reverse), then a last elementwise spline.

    ``config`` fields: num_segments, hidden_features, num_hidden_layers, num_couplings,
    min_bin_width, min_bin_height, min_derivative.
    """
    if num_dims < 2:
        raise ValueError("joint_flow needs at least 2 dimensions")
    core = [_elementwise(num_dims, config)]
    core += _couplings(num_dims, config, None, rngs)
    core.append(_elementwise(num_dims, config))
    return ToyFlow(unit_cube_flow(core), num_dims)


def conditional_flow(num_dims: int, num_classes: int, config, *, rngs: nnx.Rngs) -> ToyFlow:
    """``p(x | y)`` on ``[0,1]^num_dims`` with a one-hot label of ``num_classes`` as context:
    ``num_conditional_layers`` label-conditioned elementwise splines, and for
    ``num_dims >= 2`` also label-conditioned spline couplings in between."""
    core: list[Bijector] = []
    for i in range(config.num_conditional_layers):
        core.append(_elementwise(num_dims, config, context_features=num_classes, rngs=rngs))
        if num_dims >= 2 and i < config.num_conditional_layers - 1:
            core += _couplings(num_dims, config, num_classes, rngs)
    return ToyFlow(unit_cube_flow(core), num_dims, context_features=num_classes)


def batched_log_prob(model: ToyFlow, *, chunk: int = 32_768):
    """``f(x, context=None) -> np.ndarray``: the model's log density (float64 out) at any
    number of points, evaluated in jitted chunks of one fixed size (one compilation; the
    last chunk is padded with the cube's centre)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def log_prob(state, x, context):
        return nnx.merge(graphdef, state).log_prob(x, context)

    def f(x, context=None):
        x = np.asarray(x, np.float32)
        out = []
        for s in range(0, x.shape[0], chunk):
            xb = x[s : s + chunk]
            cb = None if context is None else np.asarray(context[s : s + chunk], np.float32)
            pad = chunk - xb.shape[0]
            if pad:
                xb = np.concatenate([xb, np.full((pad, xb.shape[1]), 0.5, np.float32)])
                if cb is not None:
                    cb = np.concatenate([cb, np.repeat(cb[:1], pad, axis=0)])
            lp = np.asarray(log_prob(state, xb, cb), np.float64)
            out.append(lp[: chunk - pad])
        return np.concatenate(out) if out else np.zeros((0,))

    return f
