"""Label-conditioned Glow p(x|y) on the offline 8x8 digits: the default conditional run.

    python -m experiments.train --config=configs/glow_digits_cond.py --workdir=runs/digits_cond
    python -m experiments.evaluate --workdir=runs/digits_cond
    python -m experiments.sample --workdir=runs/digits_cond --class_grid

The model and schedule of ``glow_digits.py``; the label (one-hot) enters every prior and
every coupling network (``condition_on='all'``). Model selection uses validation log p(x|y);
``experiments.evaluate`` reports the conditional and marginal bits/dim and the Bayes-rule
accuracy.
Variants (comma-separated): ``smoke`` (seconds; the tests run it), ``top`` (Glow's
top-prior-only conditioning), ``aux`` (Glow's auxiliary classifier on the top latent,
weight_y = 0.01).
Expected: test 2.03 bits/dim (marginal; conditional 1.98, Bayes accuracy 0.99)
"""

from configs.base import GLOW_DIGITS_COND, glow_digits_config, smoke, with_variants

VARIANTS = {
    "smoke": smoke,
    "top": {"model": dict(condition_on="top")},
    "aux": {"model": dict(weight_y=0.01)},
}


def get_config(arg: str | None = None):
    c = glow_digits_config()
    c.update(GLOW_DIGITS_COND)
    return with_variants(c, arg, "glow_digits_cond", VARIANTS)
