"""Jet on CIFAR-10 (8-bit, 32x32x3), with Jet's ImageNet64 architecture and optimizer.

    python -m experiments.train --config=configs/jet_cifar10.py --workdir=runs/jet_cifar10

Patch 4 (64 tokens of 48 features), 32 couplings (pattern: four channel couplings, then one
spatial; spatial splits checkerboard, vertical and horizontal stripes and their complements)
whose networks are ViTs of 2 blocks, width 512, 8 heads; AdamW b2 = 0.95, lr 3e-4 with 10%
warmup and cosine decay, clipping at 1, batch 256. Needs CIFAR-10 prepared for TFDS (see
README). Result: not yet measured (no accelerator run).
Variants (comma-separated): ``smoke`` (a tiny model, a few steps; the tests run it on mocked
data), ``cond`` (label-conditioned p(x|y), label dropout 0.1).
"""

from configs.base import base_config, finalize


def apply_variants(c, arg: str | None, name: str) -> None:
    """The variants of the catalog-dataset Jet configs (comma-separated): ``cond``
    (label-conditioned, label dropout 0.1) and ``smoke`` (a tiny model, a few steps)."""
    variants = set(arg.split(",")) if arg else set()
    unknown = variants - {"cond", "smoke"}
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)} of {name}; known: cond, smoke")
    if "cond" in variants:
        c.model.conditional = True
        c.model.label_dropout = 0.1
    if "smoke" in variants:
        c.data.validation_size = 8
        c.model.num_couplings = 2
        c.model.block_depth = 1
        c.model.width = 8
        c.model.num_heads = 2
        c.train.batch_size = 8
        c.train.init_batch_size = 8
        c.train.num_train_steps = 4
        c.train.log_every = 2
        c.train.eval_every = 2
        c.train.checkpoint_every = 2
        c.train.num_grid_samples = 4
        c.optim.warmup_steps = 1
        c.eval.batch_size = 8


def get_config(arg: str | None = None):
    c = base_config("jet")
    c.data.name = "cifar10"
    c.data.validation_size = 5000
    c.model.patch_size = 4
    c.model.num_couplings = 32
    c.model.block_depth = 2
    c.model.width = 512
    c.model.num_heads = 8
    c.model.coupling_pattern = "channels,channels,channels,channels,spatial"
    c.model.spatial_splits = (
        "checkerboard,checkerboard-inv,vstripes,vstripes-inv,hstripes,hstripes-inv"
    )
    c.optim.name = "adamw"
    c.optim.lr = 3e-4
    c.optim.schedule = "cosine"
    c.optim.b2 = 0.95
    c.optim.weight_decay = 1e-5 / 3e-4  # optax scales it by the lr: Jet's 1e-5 per step
    c.optim.grad_clip_norm = 1.0
    c.train.batch_size = 256
    c.train.init_batch_size = 64
    c.train.num_train_steps = 200_000
    c.optim.warmup_steps = 20_000
    c.train.ema_decay = 0.9999
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.checkpoint_every = 2000
    c.train.sample_every = 5000
    c.eval.batch_size = 500
    apply_variants(c, arg, "jet_cifar10")
    return finalize(c)
