"""Jet on the offline 8x8 digits (scikit-learn's, 17 levels): the reference setting.

    python -m experiments.train --config=configs/jet_digits.py --workdir=runs/jet_digits
    python -m experiments.train --config=configs/jet_digits.py:cond --workdir=runs/jet_digits_cond
    python -m experiments.sample --workdir=runs/jet_digits_cond --class_grid --guidance=2

Patch 2 (16 tokens of 4 features), 16 couplings (pattern channels, channels, spatial; spatial
splits checkerboard and its complement) whose networks are ViTs of 1 block, width 128, 4
heads. AdamW (Jet's optimizer family): lr 1e-3 with 200 warmup steps and cosine decay, b2 =
0.95, global-norm clipping at 1, Jet's weight decay of 1e-5 per step at the peak. Batch 64,
3000 steps, EMA 0.99; model selection and test evaluation as in ``glow_digits.py``.
Variants (comma-separated): ``smoke`` (seconds, a tiny model; the tests run it), ``cond``
(label-conditioned p(x|y), label dropout 0.1 so classifier-free guidance works), ``small``
(8 couplings of width 64: an eighth of the parameters; the shipped checkpoint, ``models/``).
Expected: test 2.13 bits/dim
"""

from configs.base import JET_VARIANTS, image_config, set_jet_lr, with_variants

VARIANTS = {"small": {"model": dict(num_couplings=8, width=64)}, **JET_VARIANTS}


def get_config(arg: str | None = None):
    c = image_config("jet", "digits")
    c.model.update(patch_size=2, num_couplings=16, block_depth=1, width=128, num_heads=4)
    c.model.update(
        coupling_pattern="channels,channels,spatial", spatial_splits="checkerboard,checkerboard-inv"
    )
    set_jet_lr(c, 1e-3)
    return with_variants(c, arg, "jet_digits", VARIANTS)
