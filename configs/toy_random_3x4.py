"""Toy table: a random 3x4 table (seed 0, counts 1..5, one empty cell), with the flows and
bounds of ``toy_gender_age.py``.

    python -m experiments.toy_tables --config=configs/toy_random_3x4.py

Counts [[5,4,3,2],[2,1,0,1],[1,5,4,5]] (x0 rows, label y columns), entropy 3.2388 bits.
Variants: ``smoke`` (fewer steps, looser bounds; the tests' setting).
Expected: all checks pass, NLL 3.245 bits (entropy 3.239)
"""

from configs.base import TOY_VARIANTS, toy_config, with_variants

VARIANTS = TOY_VARIANTS


def get_config(arg: str | None = None):
    c = toy_config()
    c.table.update(name="random", seed=0, shape=(3, 4), zero_cells=1)
    return with_variants(c, arg, "toy_random_3x4", VARIANTS)
