"""TarFlow on CIFAR-10 (8-bit, 32x32x3).

    python -m experiments.train --config=configs/tarflow_cifar10.py --workdir=runs/tarflow_cifar10

Patch 2 (256 tokens of 12 values), width 512, 8 blocks x 4 layers, 8 heads (head size 64 as
in ml-tarflow); AdamW lr 1e-4 (cosine, 1000 warmup steps), weight decay 1e-4, gradient
clipping 1, batch 256, 200k steps, uniform dequantization for bits/dim. Needs CIFAR-10
prepared for TFDS (see README).
Variants (comma-separated): ``smoke`` (a tiny model, a few steps; the tests run it on mocked
data), ``cond`` (label-conditioned p(x|y), label dropout 0.1 for guidance), ``gen``
(Gaussian noise augmentation, ``model.noise_sigma = 0.025`` on the unit scale = TarFlow's
0.05 on its [-1, 1] scale; sample with ``--denoise``), ``linear`` (annealed guidance
schedule).
"""

from configs.base import tarflow_paper_config, tarflow_variants, with_variants

VARIANTS = tarflow_variants(noise_sigma=0.025)


def get_config(arg: str | None = None):
    c = tarflow_paper_config("cifar10")
    c.model.update(width=512, layers_per_block=4, num_heads=8)
    c.train.num_train_steps = 200_000
    return with_variants(c, arg, "tarflow_cifar10", VARIANTS)
