"""TarFlow on ImageNet 64x64 (8-bit) with the paper's likelihood settings (Zhai et al. 2024).

    python -m experiments.train --config=configs/tarflow_imagenet64.py \\
        --workdir=runs/tarflow_imagenet64

Needs TFDS's ``downsampled_imagenet/64x64`` prepared (array_record) in $TFDS_DATA_DIR; it has
no test split, so the validation split (50,000 images) is the test split, as in the
literature, and 10,000 training images are held out for model selection. It has no class
labels (``cond`` needs a labelled ImageNet64 built separately). Patch 2 (1024 tokens of 12
values), width 768, 8 blocks x 8 layers, 12 heads (head size 64), AdamW lr 1e-4 (cosine),
batch 256, 1M steps, uniform dequantization for bits/dim (noise_sigma = 0).
Variants (comma-separated): ``smoke`` (a tiny model, a few steps), ``cond``, ``gen`` (the
paper's noise augmentation, std 0.05 on its [-1, 1] scale: ``model.noise_sigma = 0.025``
here; sample with ``--denoise``), ``linear`` (the annealed guidance schedule).
"""

from configs.base import tarflow_paper_config, tarflow_variants, with_variants

VARIANTS = tarflow_variants(noise_sigma=0.025)


def get_config(arg: str | None = None):
    c = tarflow_paper_config("imagenet64")
    c.model.update(width=768, layers_per_block=8, num_heads=12)
    c.train.update(num_train_steps=1_000_000, eval_every=10_000, sample_every=10_000)
    c.eval.batch_size = 256
    return with_variants(c, arg, "tarflow_imagenet64", VARIANTS)
