"""TarFlow on MNIST (8-bit), zero-padded to 32x32 like configs/glow_mnist.py.

    python -m experiments.train --config=configs/tarflow_mnist.py --workdir=runs/tarflow_mnist

The images are padded to 32x32 (``data.pad_to``), so bits/dim is per padded dimension, as for
Glow's MNIST config and openai/glow, and ``compare`` ranks the two families together. Patch 4
(64 tokens of 16 values), width 128, 4 blocks x 4 layers, 2 heads; AdamW lr 1e-3 (cosine,
1000 warmup steps), weight decay 1e-4, gradient clipping 1, batch 64, 100k steps, uniform
dequantization for bits/dim. Needs MNIST prepared for TFDS (see ``glow_mnist.py``).
Variants (comma-separated): ``smoke`` (a tiny model, a few steps; the tests run it on mocked
data), ``cond`` (label-conditioned p(x|y), label dropout 0.1 for guidance), ``gen``
(Gaussian noise augmentation, ``model.noise_sigma = 0.05`` on the unit scale = TarFlow's 0.1
on its [-1, 1] scale; sample with ``--denoise``), ``linear`` (annealed guidance schedule).
"""

from configs.base import image_config, tarflow_variants, with_variants

VARIANTS = tarflow_variants(noise_sigma=0.05)


def get_config(arg: str | None = None):
    c = image_config("tarflow", "mnist")
    c.model.update(patch_size=4, width=128, num_blocks=4, layers_per_block=4, num_heads=2)
    c.optim.update(lr=1e-3, warmup_steps=1000)
    c.train.update(batch_size=64, num_train_steps=100_000, ema_decay=0.999)
    return with_variants(c, arg, "tarflow_mnist", VARIANTS)
