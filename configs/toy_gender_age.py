"""Toy table: the gender/age seed table, joint and label-conditioned flows.

    python -m experiments.toy_tables --config=configs/toy_gender_age.py

Four people (one male over 30, one male under 30, two females over 30): entropy 1.5 bits.
Another table: ``--config.table.name=counts --config.table.counts="((3,1),(0,4))"``, or
``--config.table.name=random --config.table.shape="(3,4)" --config.table.zero_cells=1``.
Variants: ``smoke`` (1000 joint / 3000 conditional steps, looser bounds: cells 0.02, zero
cell 0.01, NLL gap 0.03 bits; the tests' setting).
Expected: all checks pass, NLL 1.505 bits (entropy 1.5)
"""

from configs.base import TOY_VARIANTS, toy_config, with_variants

VARIANTS = TOY_VARIANTS


def get_config(arg: str | None = None):
    return with_variants(toy_config(), arg, "toy_gender_age", VARIANTS)
