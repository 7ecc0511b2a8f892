"""Couplings for vectors (non-image events): the coupling layers of ``coupling.py`` and
``spline.py`` with an MLP conditioner (``flows.nn.mlp.MLPConditioner``) instead of Glow's
convolutional one.

The split is the same as for images: ``x1 = x[..., :C // 2]`` conditions ``x2``; the
conditioner's last layer is zero-initialised, so every coupling starts as the identity.
Permutations and ActNorm need no vector version: ``ActNorm``, ``Conv1x1``, ``Conv1x1LU``,
``Reverse`` and ``Shuffle`` act on the last axis of any event.
"""

from __future__ import annotations

import jax
from flax import nnx

from flows.bijectors.coupling import COUPLINGS
from flows.bijectors.spline import spline_coupling
from flows.nn.mlp import MLPConditioner

KINDS = ("additive", "affine", "spline")


def mlp_coupling(
    kind: str,
    features: int,
    hidden: int,
    *,
    context_features: int | None = None,
    num_hidden_layers: int = 2,
    activation=jax.nn.relu,
    rngs: nnx.Rngs,
    **spline_kwargs,
):
    """A coupling on the last axis with an MLP conditioner.

    ``kind``: 'additive', 'affine' (``AdditiveCoupling`` / ``AffineCoupling``) or 'spline'
    (``SplineCoupling``; ``spline_kwargs`` such as ``num_segments``, ``bound`` go to it).
    """
    if kind == "spline":
        return spline_coupling(
            features,
            hidden,
            network="mlp",
            num_hidden_layers=num_hidden_layers,
            context_features=context_features,
            activation=activation,
            rngs=rngs,
            **spline_kwargs,
        )
    if kind not in COUPLINGS:
        raise ValueError(f"unknown coupling {kind!r}; choose one of {KINDS}")
    if spline_kwargs:
        raise ValueError(f"{kind} coupling takes no spline options {sorted(spline_kwargs)}")
    if features < 2:
        raise ValueError(f"a coupling needs at least 2 features, got {features}")
    cls = COUPLINGS[kind]
    split = features // 2
    net = MLPConditioner(
        split,
        cls.params_per_dim * (features - split),
        hidden,
        num_hidden_layers,
        context_features=context_features,
        activation=activation,
        rngs=rngs,
    )
    return cls(net, split)
