"""TarFlow on the offline 8x8 digits (scikit-learn's, 17 levels): the reference setting.

    python -m experiments.train --config=configs/tarflow_digits.py --workdir=runs/tarflow_digits
    python -m experiments.train --config=configs/tarflow_digits.py:cond \\
        --workdir=runs/tarflow_digits_cond
    python -m experiments.sample --workdir=runs/tarflow_digits_cond --class_grid --guidance=2

Patch 2 (16 tokens of 4 values), width 128, 4 blocks x 2 transformer layers, 2 heads; AdamW
(lr 1e-3, cosine decay after 200 warmup steps, decoupled weight decay 1e-4 as in
ml-tarflow's default), gradient clipping at norm 1, batch 64, 3000 steps, EMA 0.99; model
selection and test evaluation as in ``glow_digits.py`` (uniform dequantization, k = 1).
Variants (comma-separated): ``smoke`` (seconds: a tiny model, 20 steps; the tests), ``cond``
(label-conditioned p(x|y), label dropout 0.1 so classifier-free guidance can be used),
``gen`` (TarFlow's generation mode: Gaussian noise augmentation, ``model.noise_sigma =
0.05`` on the unit scale, TarFlow's 0.1 on its [-1, 1] scale, about one quantisation bin of
the digits; sample with ``--denoise``), ``linear`` (annealed guidance schedule), ``small``
(width 64: a quarter of the parameters; the shipped checkpoint, ``models/``).
Expected: test 2.18 bits/dim
"""

from configs.base import image_config, tarflow_variants, with_variants

VARIANTS = {"small": {"model": dict(width=64)}, **tarflow_variants(noise_sigma=0.05)}


def get_config(arg: str | None = None):
    c = image_config("tarflow", "digits")
    c.model.update(patch_size=2, width=128, num_blocks=4, layers_per_block=2, num_heads=2)
    c.model.mlp_ratio = 4
    return with_variants(c, arg, "tarflow_digits", VARIANTS)
