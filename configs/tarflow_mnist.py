"""TarFlow on MNIST (8-bit), zero-padded to 32x32 like configs/glow_mnist.py.

    python -m experiments.train --config=configs/tarflow_mnist.py --workdir=runs/tarflow_mnist

Needs MNIST prepared for TFDS (``tfds build mnist --file_format=array_record`` on a machine
with internet and TensorFlow, then copy ~/tensorflow_datasets/mnist here). The images are
padded to 32x32 (``data.pad_to``), so bits/dim is per padded dimension, as for Glow's MNIST
config and openai/glow, and ``compare`` ranks the two families together.
Architecture: the MNIST setting of the TarFlow issue, patch 4 (64 tokens of 16 values),
width 128, 4 blocks x 4 layers, 2 heads; AdamW lr 1e-3 (cosine, 1000 warmup steps), weight
decay 1e-4, gradient clipping 1, batch 64, uniform dequantization for bits/dim.
Result: not yet measured here (no MNIST offline).
Variants (comma-separated): ``smoke`` (a tiny model, a few steps; the tests run it on mocked
data), ``cond`` (label-conditioned p(x|y), label dropout 0.1 for guidance), ``gen``
(Gaussian noise augmentation, ``model.noise_sigma = 0.05`` on the unit scale = TarFlow's 0.1
on its [-1, 1] scale; sample with ``--denoise``).
"""

from configs.base import base_config, finalize
from configs.tarflow_digits import apply_variants


def get_config(arg: str | None = None):
    c = base_config(model="tarflow")
    c.data.name = "mnist"
    c.data.pad_to = (32, 32)
    c.data.validation_size = 5000
    c.model.patch_size = 4
    c.model.width = 128
    c.model.num_blocks = 4
    c.model.layers_per_block = 4
    c.model.num_heads = 2
    c.optim.name = "adamw"
    c.optim.weight_decay = 1e-4
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 1000
    c.optim.schedule = "cosine"
    c.optim.grad_clip_norm = 1.0
    c.train.batch_size = 64
    c.train.num_train_steps = 100_000
    c.train.ema_decay = 0.999
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.checkpoint_every = 2000
    c.train.sample_every = 5000
    c.train.sample_temperature = 1.0
    c.eval.batch_size = 500
    apply_variants(c, arg, "tarflow_mnist", noise_sigma=0.05)
    return finalize(c)
