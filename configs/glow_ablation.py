"""Glow's ablation grid (paper Fig. 3): permutation x coupling, one run per cell.

    for p in reverse shuffle conv1x1 conv1x1_lu; do for c in additive affine spline; do
      python -m experiments.train --config=configs/glow_ablation.py:$p,$c \\
          --workdir=runs/ablation/$p-$c
    done; done
    python -m experiments.compare runs/ablation/*

The paper ran this on CIFAR-10 (K=32, L=3, 512 channels) with the additive and affine
couplings; ``spline`` (a rational-quadratic spline coupling, Durkan et al. 2019, with the
same conv net; ``model.spline_num_segments``, ``model.spline_bound``) is our addition. By
default the grid runs on the offline digits with the digits model, so the whole grid
finishes on a CPU. Add ``,cifar10`` to the argument for the paper's setting. ``,smoke``
shrinks it for tests. A permutation or coupling left out is Glow's (``conv1x1_lu``,
``affine``), so ``:smoke`` is the default cell, shrunk.
"""

from configs import glow_cifar10, glow_digits
from flows.bijectors.coupling import CONV_COUPLINGS
from flows.models.steps import PERMUTATIONS


def get_config(arg: str | None = None):
    parts = [p for p in (arg or "").split(",") if p]
    perm = [p for p in parts if p in PERMUTATIONS] or ["conv1x1_lu"]
    coup = [p for p in parts if p in CONV_COUPLINGS] or ["affine"]
    rest = [p for p in parts if p not in PERMUTATIONS and p not in CONV_COUPLINGS]
    unknown = [p for p in rest if p not in ("cifar10", "smoke")]
    if len(perm) != 1 or len(coup) != 1 or unknown:
        raise ValueError(
            f"glow_ablation takes '[PERMUTATION][,COUPLING][,cifar10][,smoke]' (at most one "
            f"of each) with PERMUTATION in {list(PERMUTATIONS)} and COUPLING in "
            f"{list(CONV_COUPLINGS)}; got {arg!r}"
        )
    base = glow_cifar10 if "cifar10" in rest else glow_digits
    c = base.get_config("smoke" if "smoke" in rest else None)
    c.model.permutation = perm[0]
    c.model.coupling = coup[0]
    return c
