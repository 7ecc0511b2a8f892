"""Toy table: a random 3x4 table (seed 0, counts 1..5, one empty cell), same flows and
bounds as ``toy_gender_age``.

    python -m experiments.toy_tables --config=configs/toy_random_3x4.py

Counts [[5,4,3,2],[2,1,0,1],[1,5,4,5]] (x0 rows, label y columns), entropy 3.2388 bits.
Result (measured on 2 shared CPU cores, ~56 s wall): total mass 1.000001, max cell error
0.0016, zero cell 0.0011, NLL 3.2451 +- 0.0023 bits (gap 0.0063); p(x|y) max error 0.0027,
Bayes p(y|x) 0.0041; all checks pass (the issue's bounds for the seed table).
Variants: ``:smoke`` (fewer steps, looser bounds; the tests' setting).
"""

from configs.toy_gender_age import base_toy_config, smoke


def get_config(arg: str | None = None):
    c = base_toy_config()
    c.table.name = "random"
    c.table.seed = 0
    c.table.shape = (3, 4)
    c.table.zero_cells = 1
    if arg == "smoke":
        smoke(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of toy_random_3x4; known: 'smoke'")
    c.lock()
    return c
