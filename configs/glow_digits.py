"""Glow on the offline 8x8 digits (scikit-learn's, 17 levels): the default experiment.

    python -m experiments.train --config=configs/glow_digits.py --workdir=runs/digits

L=2 levels, K=8 steps, 64 hidden channels, affine coupling, LU 1x1 convolution, the logit
map; Adamax lr 1e-3 (200 warmup steps, cosine decay), batch 64, 3000 steps, EMA 0.99; model
selection on 150 held-out training digits, the test split (300 digits) evaluated once on the
best-on-validation parameters.
Variants: ``smoke`` (seconds, a tiny model; the tests run it).
Expected: test 2.07 bits/dim
"""

from configs.base import glow_digits_config, smoke, with_variants

VARIANTS = {"smoke": smoke}


def get_config(arg: str | None = None):
    return with_variants(glow_digits_config(), arg, "glow_digits", VARIANTS)
