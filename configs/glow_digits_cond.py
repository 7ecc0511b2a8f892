"""Label-conditioned Glow p(x|y) on the offline 8x8 digits: the default conditional run.

    python -m experiments.train --config=configs/glow_digits_cond.py --workdir=runs/digits_cond
    python -m experiments.evaluate --workdir=runs/digits_cond      # conditional + marginal bpd,
                                                                   # Bayes-rule accuracy
    python -m experiments.sample --workdir=runs/digits_cond --class_grid

Same architecture and schedule as ``glow_digits.py``; the label (one-hot) enters every prior
and every coupling network (``condition_on='all'``); ``'top'`` is Glow's choice. Model
selection uses validation log p(x|y). Result: see README ("Results").
Variants: ``:smoke``, ``:top`` (Glow's top-prior-only conditioning), ``:aux`` (Glow's
auxiliary classifier on the top latent, weight_y = 0.01).
"""

from configs import glow_digits


def get_config(arg: str | None = None):
    variants = set(arg.split(",")) if arg else set()
    unknown = variants - {"smoke", "top", "aux"}
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)} of glow_digits_cond")
    c = glow_digits.get_config("smoke" if "smoke" in variants else None)
    c.model.conditional = True
    c.model.condition_on = "top" if "top" in variants else "all"
    if "aux" in variants:
        c.model.weight_y = 0.01
    return c
