"""Glow on CIFAR-10 with the paper's hyperparameters (Kingma & Dhariwal 2018).

    python -m experiments.train --config=configs/glow_cifar10.py --workdir=runs/cifar10

L=3 levels, K=32 steps, 512 hidden channels, affine coupling (sigmoid(h + 2) scale), LU 1x1
convolution, learned priors at every split, Adamax lr 1e-3 with 4000 linear warmup steps,
batch 64 per device (set ``train.batch_size`` to 64 x devices), 8-bit data, EMA 0.999.
Needs CIFAR-10 prepared for TFDS (see README).
Variants (comma-separated): ``smoke`` (a tiny model, a few steps; the tests run it on mocked
data), ``cond`` (label-conditioned p(x|y): Glow's y-conditioned top prior, weight_y = 0.01).
Expected: test 3.35 bits/dim (the paper's)
"""

from configs.base import GLOW_CATALOG_VARIANTS, glow_cifar10_config, with_variants

VARIANTS = GLOW_CATALOG_VARIANTS


def get_config(arg: str | None = None):
    return with_variants(glow_cifar10_config(), arg, "glow_cifar10", VARIANTS)
