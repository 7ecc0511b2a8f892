"""A multilayer perceptron conditioner for couplings on vectors (the last axis).

``MLPConditioner(x1, context)``: ``Linear -> act -> (Linear -> act) * (L - 1) -> Linear``
with ``L = num_hidden_layers`` hidden layers of ``hidden_features`` units. The last layer is
zero-initialised (Glow), so a coupling that uses it starts as the identity. With
``context_features``, a learned projection of the context (``ContextProjection``, as in
``ConvConditioner``) is added to the first hidden features. It acts on the last axis only,
so on images it is a per-pixel (1x1) network.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from flows.nn.conditioners import ContextProjection, hidden_kernel_init, require_context


class MLPConditioner(nnx.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: int,
        num_hidden_layers: int = 2,
        *,
        context_features: int | None = None,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        rngs: nnx.Rngs,
    ):
        if num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
        sizes = [in_features] + [hidden_features] * num_hidden_layers
        self.hidden = nnx.List(
            [
                nnx.Linear(a, b, kernel_init=hidden_kernel_init, rngs=rngs)
                for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            ]
        )
        zeros = nnx.initializers.zeros_init()
        self.out = nnx.Linear(hidden_features, out_features, kernel_init=zeros, rngs=rngs)
        self.context_proj = (
            ContextProjection(context_features, hidden_features, zero_init=False, rngs=rngs)
            if context_features
            else None
        )
        self.activation = activation

    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        require_context(context, self.context_proj)
        h = x
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if i == 0 and self.context_proj is not None:
                h = h + self.context_proj(context, h.ndim)
            h = self.activation(h)
        return self.out(h)
