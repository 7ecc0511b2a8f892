"""Invertible layers. Forward is data -> latent; see ``base.Bijector`` for the interface."""

from flows.bijectors.actnorm import ActNorm
from flows.bijectors.base import Bijector, Buffer, Chain, Invert
from flows.bijectors.conv1x1 import Conv1x1, Conv1x1LU
from flows.bijectors.coupling import AdditiveCoupling, AffineCoupling, conv_coupling
from flows.bijectors.permutations import Permute, Reverse, Shuffle
from flows.bijectors.preprocess import Logit, Probit, Scale, Shift
from flows.bijectors.priors import GaussianSplit, LearnedPrior
from flows.bijectors.spline import RationalQuadraticSpline, SplineCoupling, spline_coupling
from flows.bijectors.squeeze import Patchify, Squeeze
from flows.bijectors.vector import mlp_coupling

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Bijector",
    "Buffer",
    "Chain",
    "Conv1x1",
    "Conv1x1LU",
    "GaussianSplit",
    "Invert",
    "LearnedPrior",
    "Logit",
    "Patchify",
    "Permute",
    "Probit",
    "RationalQuadraticSpline",
    "Reverse",
    "Scale",
    "Shift",
    "Shuffle",
    "SplineCoupling",
    "Squeeze",
    "conv_coupling",
    "mlp_coupling",
    "spline_coupling",
]
