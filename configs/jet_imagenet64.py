"""Jet on ImageNet 64x64 with the paper's settings (Kolesnikov et al. 2024; big_vision's
``configs/proj/jet/imagenet64.py``): 3.72 bits/dim reported for 32 couplings of block depth 2.

    python -m experiments.train --config=configs/jet_imagenet64.py --workdir=runs/jet_imagenet64

Patch 4 (256 tokens of 48 features), 32 couplings (pattern: four channel couplings, then one
spatial; spatial splits checkerboard, vertical and horizontal stripes and their complements)
whose networks are ViTs of 2 blocks, width 512, 8 heads, MLP 4x; Adam(W) b2 = 0.95, lr 3e-4
with 10% warmup and cosine decay, global-norm clipping at 1, batch 1024, 200 epochs
(250k steps); Jet's decoupled weight decay 1e-5 per step (optax's adamw multiplies
``weight_decay`` by the lr, hence 1e-5 / 3e-4). No EMA (the paper's runs have none).
Needs TFDS ``downsampled_imagenet/64x64`` prepared (``array_record``) under
``config.data.data_dir``; it has no labels, so there is no ``cond`` variant.
Result: not yet measured here (needs accelerators).
Variant ``smoke``: a tiny Jet for a few steps on the offline digits instead (ImageNet cannot be
mocked offline in the tests): it checks the config's optimizer and training path only.
"""

from configs.base import base_config, finalize


def get_config(arg: str | None = None):
    if arg not in (None, "", "smoke"):
        raise ValueError(f"unknown variant {arg!r} of jet_imagenet64; known: 'smoke'")
    c = base_config("jet")
    c.data.name = "downsampled_imagenet/64x64"
    c.data.test_split = "validation"
    c.data.validation_size = 10_000
    c.model.patch_size = 4
    c.model.num_couplings = 32
    c.model.block_depth = 2
    c.model.width = 512
    c.model.num_heads = 8
    c.model.mlp_ratio = 4
    c.model.coupling_pattern = "channels,channels,channels,channels,spatial"
    c.model.spatial_splits = (
        "checkerboard,checkerboard-inv,vstripes,vstripes-inv,hstripes,hstripes-inv"
    )
    c.optim.name = "adamw"
    c.optim.lr = 3e-4
    c.optim.schedule = "cosine"
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.weight_decay = 1e-5 / 3e-4
    c.optim.grad_clip_norm = 1.0
    c.train.batch_size = 1024
    c.train.init_batch_size = 64
    c.train.num_train_steps = 250_000
    c.optim.warmup_steps = 25_000
    c.train.ema_decay = 0.0
    c.train.log_every = 100
    c.train.eval_every = 5000
    c.train.checkpoint_every = 2000
    c.train.sample_every = 10_000
    c.eval.batch_size = 500
    if arg == "smoke":
        c.data.name = "digits"
        c.data.test_split = "test"
        c.data.validation_size = 16
        c.model.patch_size = 2
        c.model.num_couplings = 5  # one repeat of the pattern
        c.model.block_depth = 1
        c.model.width = 8
        c.model.num_heads = 2
        c.train.batch_size = 8
        c.train.init_batch_size = 8
        c.train.num_train_steps = 4
        c.optim.warmup_steps = 1
        c.train.log_every = 2
        c.train.eval_every = 2
        c.train.checkpoint_every = 2
        c.train.num_grid_samples = 4
        c.eval.batch_size = 100
    return finalize(c)
