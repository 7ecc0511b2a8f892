"""TarFlow on CIFAR-10 (8-bit, 32x32x3).

    python -m experiments.train --config=configs/tarflow_cifar10.py --workdir=runs/tarflow_cifar10

Needs CIFAR-10 prepared for TFDS (see README). Architecture: patch 2 (256 tokens of 12
values), width 512, 8 blocks x 4 layers, 8 heads (head size 64 as in ml-tarflow); AdamW lr
1e-4 (cosine, 1000 warmup steps), weight decay 1e-4, gradient clipping 1, batch 256,
uniform dequantization for bits/dim. Result: not yet measured here (needs an accelerator).
Variants (comma-separated): ``smoke`` (a tiny model, a few steps; the tests run it on mocked
data), ``cond`` (label-conditioned p(x|y), label dropout 0.1 for guidance), ``gen``
(Gaussian noise augmentation, ``model.noise_sigma = 0.025`` on the unit scale = TarFlow's
0.05 on its [-1, 1] scale; sample with ``--denoise``).
"""

from configs.base import base_config, finalize
from configs.tarflow_digits import apply_variants


def get_config(arg: str | None = None):
    c = base_config(model="tarflow")
    c.data.name = "cifar10"
    c.data.validation_size = 5000
    c.model.patch_size = 2
    c.model.width = 512
    c.model.num_blocks = 8
    c.model.layers_per_block = 4
    c.model.num_heads = 8
    c.optim.name = "adamw"
    c.optim.weight_decay = 1e-4
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 1000
    c.optim.schedule = "cosine"
    c.optim.grad_clip_norm = 1.0
    c.train.batch_size = 256
    c.train.num_train_steps = 200_000
    c.train.ema_decay = 0.9999
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.checkpoint_every = 2000
    c.train.sample_every = 5000
    c.train.sample_temperature = 1.0
    c.eval.batch_size = 500
    apply_variants(c, arg, "tarflow_cifar10", noise_sigma=0.025)
    return finalize(c)
