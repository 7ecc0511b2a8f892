"""TarFlow on the offline 8x8 digits (scikit-learn's, 17 levels).

    python -m experiments.train --config=configs/tarflow_digits.py --workdir=runs/tarflow_digits
    python -m experiments.train --config=configs/tarflow_digits.py:cond \
        --workdir=runs/tarflow_digits_cond
    python -m experiments.sample --workdir=runs/tarflow_digits_cond --class_grid --guidance=2

The issue's reference setting: patch 2 (16 tokens of 4 values), width 128, 4 blocks x 2
transformer layers, 2 heads; AdamW (lr 1e-3, cosine decay after 200 warmup steps, weight
decay 1e-4 as in ml-tarflow's default, decoupled), gradient clipping at norm 1, batch 64,
3000 steps, EMA 0.99, validation every 250 steps on 150 held-out training digits
(best-on-validation selection), test bits/dim with uniform dequantization, k = 1.
TarFlow's own code at these sizes reaches 2.205 +- 0.027 test bits/dim; Glow
(configs/glow_digits.py) 2.071. Result here (at 8823bd0, 2 CPU cores, 20 min): test
2.184 +- 0.019 bits/dim (EMA, best-on-validation step 1500; at f9057d9, before the dense
layers' 2-D products and CPU weight-gradient VJP changed the rounding, 2.176 +- 0.017);
``:cond`` (at f9057d9) conditional 2.115 +- 0.021, marginal 2.157 +- 0.019, Bayes accuracy
0.983 +- 0.007. Validation is best
at step 1500 and rises after it (train 1.73, validation 2.69 at step 3000): the 1,347
training digits are overfit, which best-on-validation selection absorbs.

Variants (comma-separated, combinable): ``smoke`` (seconds: a tiny model, 20 steps; the
tests), ``cond`` (label-conditioned p(x|y), label dropout 0.1 so classifier-free guidance
can be used), ``gen`` (TarFlow's generation mode: Gaussian noise augmentation; sample with
``--denoise``), ``linear`` (annealed guidance schedule). ``gen`` sets ``model.noise_sigma =
0.05`` on the unit scale: TarFlow's sigma is on its [-1, 1] scale, where this is 0.1 (sigma
on [-1, 1] = 2 x ours); it is about one quantisation bin of the 17-level digits (1/17 =
0.059). Bits/dim runs keep ``noise_sigma = 0`` (``gen`` runs still report a valid, looser,
bound on clean dequantized test images).
"""

from configs.base import base_config, finalize

VARIANTS = ("smoke", "cond", "gen", "linear")


def apply_variants(c, arg: str | None, name: str, *, noise_sigma: float) -> None:
    """The variants of every TarFlow config, comma-separated (see this module's docstring);
    ``noise_sigma``: the ``gen`` variant's noise std on the unit scale."""
    variants = set(arg.split(",")) if arg else set()
    unknown = variants - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)} of {name}; known: {VARIANTS}")
    if "cond" in variants:
        c.model.conditional = True
        c.model.label_dropout = 0.1
    if "gen" in variants:
        c.model.noise_sigma = noise_sigma
    if "linear" in variants:
        c.model.guidance_schedule = "linear"
    if "smoke" in variants:
        c.model.width = 16
        c.model.num_blocks = 2
        c.model.layers_per_block = 1
        c.model.num_heads = 2
        c.optim.warmup_steps = 1
        if c.data.name == "digits":
            c.train.num_train_steps = 20
            c.train.log_every = 5
            c.train.eval_every = 10
            c.train.checkpoint_every = 10
            c.train.init_batch_size = 64
            c.train.num_grid_samples = 16
        else:  # catalog datasets: the tests run it on 40 mocked examples
            c.data.validation_size = 8
            c.train.batch_size = 8
            c.train.init_batch_size = 16
            c.train.num_train_steps = 4
            c.train.log_every = 2
            c.train.eval_every = 2
            c.train.checkpoint_every = 2
            c.train.sample_every = 0
            c.train.num_grid_samples = 4
            c.eval.batch_size = 8


def get_config(arg: str | None = None):
    c = base_config(model="tarflow")
    c.data.name = "digits"
    c.data.validation_size = 150
    c.model.patch_size = 2
    c.model.width = 128
    c.model.num_blocks = 4
    c.model.layers_per_block = 2
    c.model.num_heads = 2
    c.model.mlp_ratio = 4
    c.optim.name = "adamw"
    c.optim.weight_decay = 1e-4
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 200
    c.optim.schedule = "cosine"
    c.optim.grad_clip_norm = 1.0
    c.train.batch_size = 64
    c.train.num_train_steps = 3000
    c.train.ema_decay = 0.99
    c.train.log_every = 50
    c.train.eval_every = 250
    c.train.checkpoint_every = 500
    c.train.num_grid_samples = 100
    c.train.sample_temperature = 1.0
    c.eval.batch_size = 150
    apply_variants(c, arg, "tarflow_digits", noise_sigma=0.05)
    return finalize(c)
