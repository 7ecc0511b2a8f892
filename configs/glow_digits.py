"""Glow on the offline 8x8 digits (scikit-learn's, 17 levels): the default experiment.

    python -m experiments.train --config=configs/glow_digits.py --workdir=runs/digits

Data: digits train split minus a 150-example validation split (model selection); the test
split (300 examples) is evaluated once, on the best-on-validation parameters.
Result: see README ("Results"); measured on 2 CPU cores.
Variants: ``:smoke`` (seconds; used by the tests).
"""

from configs.base import base_config, finalize


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "digits"
    c.data.validation_size = 150
    c.model.num_levels = 2
    c.model.num_steps = 8
    c.model.hidden_channels = 64
    # Most digit pixels are exactly 0: the logit map (Jacobian counted) moves the hard edge
    # of [0, 1) to infinity, which a Gaussian base density fits better than the plain shift.
    c.model.logit_alpha = 1e-3
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 200
    c.optim.schedule = "cosine"
    c.train.batch_size = 64
    c.train.num_train_steps = 3000
    c.train.ema_decay = 0.99
    c.train.log_every = 50
    c.train.eval_every = 250
    c.train.checkpoint_every = 500
    c.train.num_grid_samples = 100
    c.eval.batch_size = 150
    if arg == "smoke":
        c.model.num_levels = 1
        c.model.num_steps = 2
        c.model.hidden_channels = 16
        c.train.num_train_steps = 20
        c.train.log_every = 5
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
        c.train.init_batch_size = 64
        c.train.num_grid_samples = 16
        c.optim.warmup_steps = 5
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of glow_digits; known: 'smoke'")
    return finalize(c)
