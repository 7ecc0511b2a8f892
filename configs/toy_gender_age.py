"""Toy table: the gender/age seed table (issue 5), joint and label-conditioned flows.

    python -m experiments.toy_tables --config=configs/toy_gender_age.py

Four people (one male over 30, one male under 30, two females over 30): entropy 1.5 bits.
Another table: ``--config.table.name=counts --config.table.counts="((3,1),(0,4))"``, or
``--config.table.name=random --config.table.shape="(3,4)" --config.table.zero_cells=1``.
Result (measured on 2 shared CPU cores, ~38 s wall, train seed 0): total mass 0.999999,
max cell error 0.0022, zero cell 0.0010, NLL 1.5054 +- 0.0016 bits (entropy 1.5); conditional
flow p(x|y) max error 0.0022, Bayes p(y|x) from it 0.0013; all checks pass. Train seeds 1-3:
max cell error <= 0.0022, p(x|y) <= 0.0037, NLL gap <= 0.0056 bits.
Variants: ``:smoke`` (1000 joint / 3000 conditional steps, looser bounds: cells 0.02, zero
cell 0.01, NLL gap 0.03 bits; the tests' setting, ~25-40 s wall).
"""

import ml_collections


def base_toy_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.table = ml_collections.ConfigDict()
    c.table.name = "gender_age"  # 'gender_age' | 'counts' | 'random'
    c.table.label = "counts"  # name of a 'counts' table
    c.table.counts = ()  # nested tuple of counts, label on the last axis ('counts')
    c.table.axes = ()  # optional axis names ('counts')
    c.table.categories = ()  # optional category names per axis ('counts')
    c.table.seed = 0  # 'random'
    c.table.shape = (3, 4)  # 'random'
    c.table.zero_cells = 1  # 'random'
    c.table.max_count = 5  # 'random': counts drawn from 1..max_count

    c.model = ml_collections.ConfigDict()
    c.model.num_segments = 16
    c.model.hidden_features = 64
    c.model.num_hidden_layers = 2
    c.model.num_couplings = 2  # joint flow: spline couplings (each followed by a Reverse)
    c.model.num_conditional_layers = 2  # conditional flow: label-conditioned splines
    c.model.min_bin_width = 1e-4
    c.model.min_bin_height = 1e-4
    c.model.min_derivative = 1e-4

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"
    c.optim.lr = 1e-2
    c.optim.warmup_steps = 100
    c.optim.schedule = "cosine"
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.grad_clip_norm = 0.0
    c.optim.max_consecutive_nonfinite = 50

    c.train = ml_collections.ConfigDict()
    c.train.seed = 0
    c.train.batch_size = 512
    c.train.num_train_steps = 3000  # joint flow
    c.train.conditional_num_train_steps = 6000
    c.train.steps_per_call = 250  # steps per jitted lax.scan
    c.train.stratified = True  # cells of a batch in (almost) exact table proportions

    c.eval = ml_collections.ConfigDict()
    c.eval.nll_samples = 100_000
    c.eval.seed = 1234
    c.eval.quadrature_tol = 2e-5  # summed error estimate of the adaptive cubature (joint)
    c.eval.conditional_quadrature_tol = 1e-6  # per label; 1-D for 2-way tables, so cheap
    c.eval.quadrature_nodes = 8

    c.check = ml_collections.ConfigDict()
    c.check.total_mass_tol = 1e-4
    c.check.cell_tol = 0.01
    c.check.zero_cell_tol = 0.005
    c.check.nll_gap_bits = 0.02
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.train.num_train_steps = 1000
    c.train.conditional_num_train_steps = 3000
    c.eval.quadrature_tol = 1e-4  # a pessimistic estimate: the true error is far smaller
    c.check.cell_tol = 0.02
    c.check.zero_cell_tol = 0.01
    c.check.nll_gap_bits = 0.03
    return c


def get_config(arg: str | None = None):
    c = base_toy_config()
    if arg == "smoke":
        smoke(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of toy_gender_age; known: 'smoke'")
    c.lock()
    return c
