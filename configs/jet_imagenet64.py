"""Jet on ImageNet 64x64 with the paper's settings (Kolesnikov et al. 2024; big_vision's
``configs/proj/jet/imagenet64.py``).

    python -m experiments.train --config=configs/jet_imagenet64.py --workdir=runs/jet_imagenet64

Patch 4 (256 tokens of 48 features), 32 couplings (pattern: four channel couplings, then one
spatial; spatial splits checkerboard, vertical and horizontal stripes and their complements)
whose networks are ViTs of 2 blocks, width 512, 8 heads, MLP 4x; AdamW b2 = 0.95, lr 3e-4
with 10% warmup and cosine decay, global-norm clipping at 1, batch 1024, 200 epochs (250k
steps); Jet's decoupled weight decay of 1e-5 per step; no EMA (the paper's runs have none).
Needs TFDS ``downsampled_imagenet/64x64`` prepared (``array_record``) under
``config.data.data_dir``; it has no labels, so there is no ``cond`` variant.
Variants: ``smoke`` (a tiny Jet for a few steps on the offline digits instead, as ImageNet
cannot be mocked offline in the tests: it checks the optimizer and training path only).
Expected: 3.72 bits/dim (the paper's)
"""

from configs.base import jet_paper_config, smoke, with_variants


def _smoke(c) -> None:
    smoke(c)
    c.data.update(name="digits", test_split="test", validation_size=16)
    c.model.update(patch_size=2, num_couplings=5)  # one repeat of the coupling pattern
    c.eval.batch_size = 100


VARIANTS = {"smoke": _smoke}


def get_config(arg: str | None = None):
    c = jet_paper_config("imagenet64")
    c.optim.warmup_steps = 25_000
    c.train.update(batch_size=1024, num_train_steps=250_000, ema_decay=0.0, sample_every=10_000)
    return with_variants(c, arg, "jet_imagenet64", VARIANTS)
