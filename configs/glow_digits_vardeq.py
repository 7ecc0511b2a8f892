"""Glow on the offline 8x8 digits with variational dequantization (Flow++, Ho et al. 2019).

    python -m experiments.train --config=configs/glow_digits_vardeq.py --workdir=runs/digits_vardeq
    python -m experiments.evaluate --workdir=runs/digits_vardeq --num_samples=16  # IW bound

The model is ``glow_digits.py``'s, trained and evaluated with the same schedule; the noise
``u ~ q(u | v)`` comes from a learned flow (``flows.bijectors.dequantizer``: 4 spline
couplings on [0, 1)^D whose conv nets see the image, 32 hidden channels), trained jointly by
the bound ``E_q[log p(x) - log q(u | v)]``. Result: see README ("Results").
Variants: ``:smoke`` (seconds; used by the tests), ``:cond`` (the conditional digits model,
``glow_digits_cond.py``, with the same dequantizer).
"""

from configs import glow_digits, glow_digits_cond


def get_config(arg: str | None = None):
    variants = set(arg.split(",")) if arg else set()
    unknown = variants - {"smoke", "cond"}
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)} of glow_digits_vardeq")
    base = glow_digits_cond if "cond" in variants else glow_digits
    c = base.get_config("smoke" if "smoke" in variants else None)
    c.model.dequantization = "variational"
    if "smoke" in variants:
        c.model.dequantizer_hidden_channels = 8
        c.model.dequantizer_steps = 2
    return c
