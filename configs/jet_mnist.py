"""Jet on MNIST (8-bit, 28x28 zero-padded to 32x32 as openai/glow does; bits/dim per padded
dimension, comparable with ``glow_mnist.py``).

    python -m experiments.train --config=configs/jet_mnist.py --workdir=runs/jet_mnist

Patch 2 (256 tokens of 4 features), 32 couplings (channels, channels, spatial; spatial
splits checkerboard, stripes and complements) whose networks are ViTs of 1 block, width 256,
4 heads; AdamW b2 = 0.95, lr 5e-4 with warmup and cosine decay, clipping at 1, batch 128.
Needs MNIST prepared for TFDS (see ``glow_mnist.py``). Result: not yet measured here.
Variants (comma-separated): ``smoke`` (a tiny model, a few steps; the tests run it on mocked
data), ``cond`` (label-conditioned p(x|y), label dropout 0.1).
"""

from configs.base import base_config, finalize
from configs.jet_cifar10 import apply_variants


def get_config(arg: str | None = None):
    c = base_config("jet")
    c.data.name = "mnist"
    c.data.pad_to = (32, 32)
    c.data.validation_size = 5000
    c.model.patch_size = 2
    c.model.num_couplings = 32
    c.model.block_depth = 1
    c.model.width = 256
    c.model.num_heads = 4
    c.model.coupling_pattern = "channels,channels,spatial"
    c.model.spatial_splits = (
        "checkerboard,checkerboard-inv,vstripes,vstripes-inv,hstripes,hstripes-inv"
    )
    c.optim.name = "adamw"
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 5000
    c.optim.schedule = "cosine"
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.02  # optax scales it by the lr: 1e-5 per step at the peak
    c.optim.grad_clip_norm = 1.0
    c.train.batch_size = 128
    c.train.init_batch_size = 64
    c.train.num_train_steps = 100_000
    c.train.ema_decay = 0.999
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.checkpoint_every = 2000
    c.train.sample_every = 5000
    c.eval.batch_size = 500
    apply_variants(c, arg, "jet_mnist")
    return finalize(c)
