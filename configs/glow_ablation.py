"""Glow's ablation grid (paper Fig. 3): permutation x coupling, one run per cell.

    for p in reverse shuffle conv1x1 conv1x1_lu; do for c in additive affine spline; do
      python -m experiments.train --config=configs/glow_ablation.py:$p,$c \\
          --workdir=runs/ablation/$p-$c
    done; done
    python -m experiments.compare runs/ablation/*

Each cell is ``glow_digits.py`` (``glow_cifar10.py`` with ``cifar10``, the paper's setting)
with the cell's permutation and coupling; ``spline`` (a rational-quadratic spline coupling,
Durkan et al. 2019, with the same conv net; ``model.spline_num_segments``,
``model.spline_bound``) is our addition to the paper's grid.
Variants (comma-separated, at most one of each kind): a permutation (``reverse``,
``shuffle``, ``conv1x1``, ``conv1x1_lu``), a coupling (``additive``, ``affine``,
``spline``), ``cifar10``, ``smoke`` (shrinks the cell for the tests). A permutation or
coupling left out is Glow's (``conv1x1_lu``, ``affine``), so ``:smoke`` is the default cell
shrunk.
"""

from configs.base import (
    glow_cifar10_config,
    glow_digits_config,
    parse_variants,
    smoke,
    with_variants,
)
from flows.bijectors.coupling import CONV_COUPLINGS
from flows.models.steps import PERMUTATIONS

VARIANTS = {
    **{p: {"model": dict(permutation=p)} for p in PERMUTATIONS},
    **{k: {"model": dict(coupling=k)} for k in CONV_COUPLINGS},
    "cifar10": None,  # picks the base config below
    "smoke": smoke,
}
ONE_OF = (tuple(PERMUTATIONS), tuple(CONV_COUPLINGS))


def get_config(arg: str | None = None):
    cifar10 = "cifar10" in parse_variants(arg, "glow_ablation", VARIANTS, one_of=ONE_OF)
    c = glow_cifar10_config() if cifar10 else glow_digits_config()
    return with_variants(c, arg, "glow_ablation", VARIANTS, one_of=ONE_OF)
