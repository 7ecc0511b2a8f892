"""Glow on the offline 8x8 digits with variational dequantization (Flow++, Ho et al. 2019).

    python -m experiments.train --config=configs/glow_digits_vardeq.py --workdir=runs/digits_vardeq
    python -m experiments.evaluate --workdir=runs/digits_vardeq --num_samples=16  # IW bound

The model and schedule of ``glow_digits.py``; the noise ``u ~ q(u | v)`` comes from a learned
flow (``flows.bijectors.dequantizer``: 4 spline couplings on [0, 1)^D whose conv nets see the
image, 32 hidden channels), trained jointly by the bound ``E_q[log p(x) - log q(u | v)]``.
Variants (comma-separated): ``smoke`` (seconds; the tests run it), ``cond`` (the conditional
digits model of ``glow_digits_cond.py``, with the same dequantizer).
Expected: test 1.93 bits/dim (k = 1; 1.84 with --num_samples=16)
"""

from configs.base import GLOW_DIGITS_COND, glow_digits_config, smoke, with_variants


def _smoke(c) -> None:
    smoke(c)
    c.model.update(dequantizer_hidden_channels=8, dequantizer_steps=2)


VARIANTS = {"smoke": _smoke, "cond": GLOW_DIGITS_COND}


def get_config(arg: str | None = None):
    c = glow_digits_config()
    c.model.dequantization = "variational"
    return with_variants(c, arg, "glow_digits_vardeq", VARIANTS)
