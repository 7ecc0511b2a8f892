"""Jet on the offline 8x8 digits (scikit-learn's, 17 levels): the issue's reference setting.

    python -m experiments.train --config=configs/jet_digits.py --workdir=runs/jet_digits
    python -m experiments.train --config=configs/jet_digits.py:cond --workdir=runs/jet_digits_cond
    python -m experiments.sample --workdir=runs/jet_digits_cond --class_grid --guidance=2

Patch 2 (16 tokens of 4 features), 16 couplings (pattern channels, channels, spatial; spatial
splits checkerboard and its complement) whose networks are ViTs of 1 block, width 128, 4
heads. AdamW (Jet's optimizer family): lr 1e-3 with 200 warmup steps and cosine decay, b2 =
0.95 (Jet's), global-norm clipping at 1, weight_decay 0.01 (optax multiplies it by the
learning rate: 1e-5 per step at the peak, Jet's ImageNet64 decay per step). Batch 64, 3000
steps, EMA 0.99 of the parameters; model selection on a 150-example validation split, the
test split (300 examples) evaluated once on the best-on-validation EMA parameters, as in
``glow_digits.py``. Result (AMD EPYC, 2 cores, about 20-40 min): 2.134 +- 0.015 test bits/dim
(best step 1750); ``:cond`` marginal 2.101 +- 0.016, Bayes accuracy 0.990. Jet's own code at
these sizes: 2.164 +- 0.016. Data: the offline digits (nothing to download).
Variants (comma-separated, combinable): ``smoke`` (seconds, a tiny model; the tests run it),
``cond`` (label-conditioned p(x|y), label dropout 0.1 so classifier-free guidance works).
"""

from configs.base import base_config, finalize

VARIANTS = ("smoke", "cond")


def get_config(arg: str | None = None):
    variants = set(arg.split(",")) if arg else set()
    unknown = variants - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)} of jet_digits; known: smoke, cond")
    c = base_config("jet")
    c.data.name = "digits"
    c.data.validation_size = 150
    c.model.patch_size = 2
    c.model.num_couplings = 16
    c.model.block_depth = 1
    c.model.width = 128
    c.model.num_heads = 4
    c.model.coupling_pattern = "channels,channels,spatial"
    c.model.spatial_splits = "checkerboard,checkerboard-inv"
    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 200
    c.optim.schedule = "cosine"
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.01
    c.optim.grad_clip_norm = 1.0
    c.train.batch_size = 64
    c.train.init_batch_size = 64  # Jet has no data-dependent initialisation
    c.train.num_train_steps = 3000
    c.train.ema_decay = 0.99
    c.train.log_every = 50
    c.train.eval_every = 250
    c.train.checkpoint_every = 500
    c.train.num_grid_samples = 100
    c.eval.batch_size = 150
    if "cond" in variants:
        c.model.conditional = True
        c.model.label_dropout = 0.1
    if "smoke" in variants:
        c.model.num_couplings = 3
        c.model.width = 16
        c.model.num_heads = 2
        c.train.num_train_steps = 20
        c.train.log_every = 5
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
        c.train.num_grid_samples = 16
        c.optim.warmup_steps = 5
    return finalize(c)
