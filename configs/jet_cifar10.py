"""Jet on CIFAR-10 (8-bit, 32x32x3), with Jet's ImageNet64 architecture and optimizer.

    python -m experiments.train --config=configs/jet_cifar10.py --workdir=runs/jet_cifar10

Patch 4 (64 tokens of 48 features), 32 couplings (pattern: four channel couplings, then one
spatial; spatial splits checkerboard, vertical and horizontal stripes and their complements)
whose networks are ViTs of 2 blocks, width 512, 8 heads; AdamW b2 = 0.95, lr 3e-4 with 10%
warmup and cosine decay, clipping at 1, batch 256, 200k steps. Needs CIFAR-10 prepared for
TFDS (see README).
Variants (comma-separated): ``smoke`` (a tiny model, a few steps; the tests run it on mocked
data), ``cond`` (label-conditioned p(x|y), label dropout 0.1).
"""

from configs.base import JET_VARIANTS, jet_paper_config, with_variants

VARIANTS = JET_VARIANTS


def get_config(arg: str | None = None):
    c = jet_paper_config("cifar10")
    c.optim.warmup_steps = 20_000
    c.train.update(batch_size=256, num_train_steps=200_000, ema_decay=0.9999)
    return with_variants(c, arg, "jet_cifar10", VARIANTS)
