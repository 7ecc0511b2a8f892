"""Glow on MNIST (8-bit, 28x28 zero-padded to 32x32 as openai/glow does).

    python -m experiments.train --config=configs/glow_mnist.py --workdir=runs/mnist

Glow's CIFAR-10 hyperparameters (L=3, K=32, 512 hidden channels, affine coupling, LU 1x1
conv, Adamax 1e-3 with 5000 warmup steps), 200k steps. Bits/dim is per padded dimension
(32*32), as in openai/glow. Needs MNIST prepared for TFDS (``tfds build mnist
--file_format=array_record`` on a machine with internet and TensorFlow, then copy
~/tensorflow_datasets/mnist here).
Variants (comma-separated): ``smoke`` (a tiny model, a few steps; the tests run it on mocked
data), ``cond`` (label-conditioned p(x|y): Glow's y-conditioned top prior, weight_y = 0.01).
Expected: about 1.05 bits/dim (Glow-class models in the literature)
"""

from configs.base import GLOW_CATALOG_VARIANTS, glow_paper_config, with_variants

VARIANTS = GLOW_CATALOG_VARIANTS


def get_config(arg: str | None = None):
    c = glow_paper_config("mnist")
    c.optim.warmup_steps = 5000
    c.train.num_train_steps = 200_000
    return with_variants(c, arg, "glow_mnist", VARIANTS)
