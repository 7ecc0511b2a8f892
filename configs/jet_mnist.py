"""Jet on MNIST (8-bit, 28x28 zero-padded to 32x32 as openai/glow does; bits/dim per padded
dimension, comparable with ``glow_mnist.py``).

    python -m experiments.train --config=configs/jet_mnist.py --workdir=runs/jet_mnist

Patch 2 (256 tokens of 4 features), 32 couplings (channels, channels, spatial; spatial
splits checkerboard, stripes and complements) whose networks are ViTs of 1 block, width 256,
4 heads; AdamW b2 = 0.95, lr 5e-4 with 5000 warmup steps and cosine decay, clipping at 1,
batch 128, 100k steps. Needs MNIST prepared for TFDS (see ``glow_mnist.py``).
Variants (comma-separated): ``smoke`` (a tiny model, a few steps; the tests run it on mocked
data), ``cond`` (label-conditioned p(x|y), label dropout 0.1).
"""

from configs.base import JET_STRIPE_SPLITS, JET_VARIANTS, image_config, set_jet_lr, with_variants

VARIANTS = JET_VARIANTS


def get_config(arg: str | None = None):
    c = image_config("jet", "mnist")
    c.model.update(patch_size=2, num_couplings=32, block_depth=1, width=256, num_heads=4)
    c.model.update(coupling_pattern="channels,channels,spatial", spatial_splits=JET_STRIPE_SPLITS)
    set_jet_lr(c, 5e-4)
    c.optim.warmup_steps = 5000
    c.train.update(batch_size=128, num_train_steps=100_000, ema_decay=0.999)
    return with_variants(c, arg, "jet_mnist", VARIANTS)
