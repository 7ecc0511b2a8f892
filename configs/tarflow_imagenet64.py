"""TarFlow on ImageNet 64x64 (8-bit) with the paper's likelihood settings (Zhai et al. 2024).

    python -m experiments.train --config=configs/tarflow_imagenet64.py \
        --workdir=runs/tarflow_imagenet64

Needs TFDS's ``downsampled_imagenet/64x64`` prepared (array_record) in $TFDS_DATA_DIR; it has
no test split, so the validation split (50,000 images) is the test split, as in the
literature, and 10,000 training images are held out for model selection. It has no class
labels (``:cond`` needs a labelled ImageNet64 built separately).
Paper settings: patch 2 (1024 tokens of 12 values), width 768, 8 blocks x 8 layers, 12
heads (head size 64), AdamW lr 1e-4 (cosine), batch 256, uniform dequantization for bits/dim
(noise_sigma = 0). Result: not yet measured here (needs accelerators); the paper reports the
best ImageNet64 likelihood of its time with these settings.
Variants (comma-separated): ``smoke`` (a tiny model, a few steps), ``cond``, ``gen``
(Gaussian noise augmentation, ``model.noise_sigma = 0.025`` on the unit scale = the paper's
0.05 on its [-1, 1] scale; sample with ``--denoise``).
"""

from configs.base import base_config, finalize
from configs.tarflow_digits import apply_variants


def get_config(arg: str | None = None):
    c = base_config(model="tarflow")
    c.data.name = "downsampled_imagenet/64x64"
    c.data.test_split = "validation"
    c.data.validation_size = 10_000
    c.model.patch_size = 2
    c.model.width = 768
    c.model.num_blocks = 8
    c.model.layers_per_block = 8
    c.model.num_heads = 12
    c.optim.name = "adamw"
    c.optim.weight_decay = 1e-4
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 1000
    c.optim.schedule = "cosine"
    c.optim.grad_clip_norm = 1.0
    c.train.batch_size = 256
    c.train.num_train_steps = 1_000_000
    c.train.ema_decay = 0.9999
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.checkpoint_every = 2000
    c.train.sample_every = 10_000
    c.train.sample_temperature = 1.0
    c.eval.batch_size = 256
    apply_variants(c, arg, "tarflow_imagenet64", noise_sigma=0.025)
    return finalize(c)
