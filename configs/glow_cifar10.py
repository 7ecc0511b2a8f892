"""Glow on CIFAR-10 with the paper's hyperparameters (Kingma & Dhariwal 2018).

    python -m experiments.train --config=configs/glow_cifar10.py --workdir=runs/cifar10

L=3 levels, K=32 steps, 512 hidden channels, affine coupling (sigmoid(h + 2) scale), LU 1x1
convolution, learned priors at every split, Adamax lr 1e-3 with linear warmup, batch 64 per
device (set ``train.batch_size`` to 64 x devices), 8-bit data. Paper: 3.35 bits/dim on test.
Needs CIFAR-10 prepared for TFDS (see README). Result here: not yet measured (no GPU run).
Variants: ``:smoke`` (tiny model, few steps; the tests run it on mocked data),
``:cond`` (label-conditioned p(x|y), Glow's y-conditioned top prior with weight_y = 0.01).
"""

from configs.base import apply_catalog_variants, base_config, finalize


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "cifar10"
    c.data.validation_size = 5000
    c.model.num_levels = 3
    c.model.num_steps = 32
    c.model.hidden_channels = 512
    c.model.coupling = "affine"
    c.model.permutation = "conv1x1_lu"
    c.optim.name = "adamax"
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 4000
    c.train.batch_size = 64
    c.train.num_train_steps = 500_000
    c.train.ema_decay = 0.999
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.checkpoint_every = 2000
    c.train.sample_every = 5000
    c.eval.batch_size = 500
    apply_catalog_variants(c, arg, "glow_cifar10")
    return finalize(c)
