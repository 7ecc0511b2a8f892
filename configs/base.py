"""Every config field, with its default, and what several config files share.

A config file starts from ``image_config(family, dataset)`` (or ``toy_config()``): every
field with its default, plus the settings its family's configs and its dataset's configs
share. It sets what is its own and ends with ``with_variants``, which applies the variants
named after the file (``--config=configs/NAME.py:a,b``) and locks the ConfigDict, so a
misspelt key (in a file or in a ``--config.a.b=`` override) fails at once with the key named.
No config file imports another: what two of them share is here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import ml_collections
from ml_collections import config_dict

from flows.data import DATA_CONFIG_DEFAULTS
from flows.errors import ConfigError
from flows.models import get_family

# Fields of config.data whose default is None, with the type an override must have (so
# that ``--config.data.n_bits=5`` works on a None default); model families declare theirs.
_DATA_OPTIONAL_TYPES = {"data_dir": str, "n_bits": int, "pad_to": tuple}


def _section(defaults: dict, optional_types: dict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            k: config_dict.placeholder(optional_types[k]) if v is None else v
            for k, v in defaults.items()
            if v is not None or k in optional_types
        }
    )


def base_config(model: str = "glow") -> ml_collections.ConfigDict:
    """Every field with its default; ``config.model`` has the fields of the registered
    family ``model`` (``flows.models.registry``)."""
    c = ml_collections.ConfigDict()
    c.data = _section(DATA_CONFIG_DEFAULTS, _DATA_OPTIONAL_TYPES)
    c.data.name = "digits"
    family = get_family(model)
    c.model = _section(family.config_defaults(), family.optional_types)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamax"  # Glow's released code; 'adam' and 'adamw' also available
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 500
    c.optim.schedule = "constant"  # or 'cosine'
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0  # AdamW's decoupled weight decay (optim.name='adamw' only)
    c.optim.grad_clip_norm = 0.0  # 0 disables global-norm clipping
    c.optim.max_consecutive_nonfinite = 50  # abort after that many skipped steps in a row

    c.train = ml_collections.ConfigDict()
    c.train.seed = 0
    c.train.batch_size = 64  # global batch, split over all devices
    c.train.init_batch_size = 256  # data-dependent ActNorm init batch
    c.train.num_train_steps = 10_000
    c.train.ema_decay = 0.0  # 0 disables the EMA of parameters
    c.train.log_every = 100
    c.train.eval_every = 1000  # validation bits/dim (model selection)
    c.train.checkpoint_every = 1000
    c.train.sample_every = 0  # 0: only the final sample grid
    c.train.num_grid_samples = 64
    c.train.sample_temperature = 0.7
    c.train.progress = True
    c.train.tensorboard = True  # TensorBoard event files in the workdir (flows.train.tensorboard)
    c.train.distributed = ml_collections.ConfigDict()
    c.train.distributed.enabled = False  # jax.distributed.initialize for multi-host
    c.train.distributed.coordinator_address = ""
    c.train.distributed.num_processes = 0
    c.train.distributed.process_id = -1

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 500
    c.eval.num_samples = 1  # importance samples of the dequantization noise (1 = ELBO)
    c.eval.use_ema = True  # evaluate EMA parameters when the run keeps an EMA
    c.eval.seed = 1234
    return c


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Lock the structure: existing fields can change, new (misspelt) ones are rejected."""
    c.lock()
    return c


# -- variants ---------------------------------------------------------------------------------

# A variant: {section: {field: value}} to set, or a function that changes the config.
Variant = Mapping[str, Mapping] | Callable[[ml_collections.ConfigDict], None]


def parse_variants(
    arg: str | None, name: str, known: Iterable[str], *, one_of: Iterable[Iterable[str]] = ()
) -> set[str]:
    """The variants that ``arg`` (``a,b``; None or '' for none) names, of the config file
    ``name``: an unknown one, or more than one of a ``one_of`` group, is a ConfigError."""
    known = list(known)
    chosen = arg.split(",") if arg else []
    unknown = [v for v in chosen if v not in known]
    if unknown:
        raise ConfigError(
            f"unknown variant{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"of {name}; known: {', '.join(known)}"
        )
    for group in one_of:
        group = list(group)
        if len([v for v in group if v in chosen]) > 1:
            raise ConfigError(f"{name} takes at most one of {', '.join(group)}; got {arg!r}")
    return set(chosen)


def with_variants(
    c: ml_collections.ConfigDict,
    arg: str | None,
    name: str,
    variants: Mapping[str, Variant | None],
    *,
    one_of: Iterable[Iterable[str]] = (),
) -> ml_collections.ConfigDict:
    """``c``, the config file ``name``'s ConfigDict, with the variants that ``arg`` names
    applied, locked.

    ``arg`` is what follows the ``:`` of ``--config=configs/NAME.py:a,b``. The variants apply
    in the order of ``variants``, whatever their order in ``arg``; a variant whose change is
    None is one the config file reads itself (``parse_variants``), e.g. to pick its base. An
    unknown variant is a one-line ConfigError that names ``name`` and the known variants.
    """
    chosen = parse_variants(arg, name, variants, one_of=one_of)
    for variant, change in variants.items():
        if variant not in chosen or change is None:
            continue
        if callable(change):
            change(c)
        else:
            c.update(change)
    return finalize(c)


# -- what the image configs share -------------------------------------------------------------

# The datasets of the image configs: the offline 8x8 digits (scikit-learn's, 17 levels; 150
# training digits held out for model selection) and the TFDS catalog datasets.
DATASETS = {
    "digits": dict(name="digits", validation_size=150),
    # 28x28 zero-padded to 32x32 as openai/glow does: bits/dim per padded dimension.
    "mnist": dict(name="mnist", pad_to=(32, 32), validation_size=5000),
    "cifar10": dict(name="cifar10", validation_size=5000),
    # No test split: the validation split is the test split, as in the literature.
    "imagenet64": dict(
        name="downsampled_imagenet/64x64", test_split="validation", validation_size=10_000
    ),
}

# The schedule of every digits config, and the bookkeeping of every catalog-dataset config.
SCHEDULES = {
    "digits": {
        "optim": dict(lr=1e-3, warmup_steps=200, schedule="cosine"),
        "train": dict(
            batch_size=64,
            num_train_steps=3000,
            ema_decay=0.99,
            log_every=50,
            eval_every=250,
            checkpoint_every=500,
            num_grid_samples=100,
        ),
        "eval": dict(batch_size=150),
    },
    "catalog": {
        "train": dict(log_every=100, eval_every=5000, checkpoint_every=2000, sample_every=5000),
        "eval": dict(batch_size=500),
    },
}

# What every config of a family shares. The transformer families: AdamW with cosine decay and
# global-norm clipping at 1; Jet's b2 = 0.95 (Jet has no data-dependent initialisation, so a
# small init batch); TarFlow's weight decay (ml-tarflow's default) and sampling temperature.
_TRANSFORMER_OPTIM = dict(name="adamw", schedule="cosine", grad_clip_norm=1.0)
FAMILIES = {
    "jet": {"optim": dict(_TRANSFORMER_OPTIM, b2=0.95), "train": dict(init_batch_size=64)},
    "tarflow": {
        "optim": dict(_TRANSFORMER_OPTIM, weight_decay=1e-4),
        "train": dict(sample_temperature=1.0),
    },
}


def _kind(dataset: str) -> str:
    return "digits" if dataset == "digits" else "catalog"


def image_config(model: str, dataset: str) -> ml_collections.ConfigDict:
    """``base_config(model)`` (locked already) with ``DATASETS[dataset]``, the dataset's
    schedule and what the family's configs share."""
    c = base_config(model)
    c.lock()
    c.data.update(DATASETS[dataset])
    c.update(SCHEDULES[_kind(dataset)])
    c.update(FAMILIES.get(model, {}))
    return c


# The smoke variant of every image config (seconds; the tests train it): a few steps of a
# tiny model, on the digits or on a catalog dataset (the tests mock 40 examples of it).
SMOKE_RUN = {
    "digits": {
        "train": dict(
            num_train_steps=20,
            log_every=5,
            eval_every=10,
            checkpoint_every=10,
            init_batch_size=64,
            num_grid_samples=16,
        ),
        "optim": dict(warmup_steps=5),
    },
    "catalog": {
        "data": dict(validation_size=8),
        "train": dict(
            batch_size=8,
            init_batch_size=16,
            num_train_steps=4,
            log_every=2,
            eval_every=2,
            checkpoint_every=2,
            num_grid_samples=4,
        ),
        "optim": dict(warmup_steps=1),
        "eval": dict(batch_size=8),
    },
}
# Each family's smoke model, on the digits and on a catalog dataset, with what else the
# family's smoke runs change.
_TARFLOW_SMOKE = {
    "model": dict(width=16, num_blocks=2, layers_per_block=1, num_heads=2),
    "optim": dict(warmup_steps=1),
    "train": dict(sample_every=0),
}
SMOKE_MODELS = {
    "glow": {
        "digits": {"model": dict(num_levels=1, num_steps=2, hidden_channels=16)},
        "catalog": {"model": dict(num_levels=2, num_steps=1, hidden_channels=8)},
    },
    "jet": {
        "digits": {"model": dict(num_couplings=3, block_depth=1, width=16, num_heads=2)},
        "catalog": {
            "model": dict(num_couplings=2, block_depth=1, width=8, num_heads=2),
            "train": dict(init_batch_size=8),
        },
    },
    "tarflow": {"digits": _TARFLOW_SMOKE, "catalog": _TARFLOW_SMOKE},
}


def smoke(c: ml_collections.ConfigDict) -> None:
    """The ``smoke`` variant: ``SMOKE_RUN`` and ``SMOKE_MODELS`` for the config's family and
    dataset."""
    kind = _kind(c.data.name)
    c.update(SMOKE_RUN[kind])
    c.update(SMOKE_MODELS[c.model.name][kind])


# The transformer families' ``cond``: label-conditioned p(x|y), label dropout 0.1 so that
# classifier-free guidance can be used.
LABEL_COND = {"model": dict(conditional=True, label_dropout=0.1)}


# -- Glow -------------------------------------------------------------------------------------

# Glow's ``cond`` as in the paper: the label enters the top prior only, with the auxiliary
# classifier on the top latent (weight_y = 0.01).
GLOW_PAPER_COND = {"model": dict(conditional=True, condition_on="top", weight_y=0.01)}
# The conditional digits Glow: the label (one-hot) enters every prior and coupling network.
GLOW_DIGITS_COND = {"model": dict(conditional=True, condition_on="all")}
# The variants of Glow on a catalog dataset.
GLOW_CATALOG_VARIANTS = {"smoke": smoke, "cond": GLOW_PAPER_COND}


def glow_digits_config() -> ml_collections.ConfigDict:
    """Glow on the digits (glow_digits, and the base of glow_digits_cond, glow_digits_vardeq
    and glow_ablation): L=2, K=8, 64 hidden channels, the logit map."""
    c = image_config("glow", "digits")
    # Most digit pixels are exactly 0: the logit map (Jacobian counted) moves the hard edge
    # of [0, 1) to infinity, which a Gaussian base density fits better than the plain shift.
    c.model.update(num_levels=2, num_steps=8, hidden_channels=64, logit_alpha=1e-3)
    return c


def glow_paper_config(dataset: str) -> ml_collections.ConfigDict:
    """Glow with the paper's CIFAR-10 hyperparameters on a catalog dataset: L=3, K=32, 512
    hidden channels, affine coupling, LU 1x1 convolution, Adamax lr 1e-3, EMA 0.999."""
    c = image_config("glow", dataset)
    c.model.update(
        num_levels=3, num_steps=32, hidden_channels=512, coupling="affine", permutation="conv1x1_lu"
    )
    c.optim.update(name="adamax", lr=1e-3)
    c.train.ema_decay = 0.999
    return c


def glow_cifar10_config() -> ml_collections.ConfigDict:
    """Glow on CIFAR-10 as in the paper (glow_cifar10, and glow_ablation's ``cifar10``)."""
    c = glow_paper_config("cifar10")
    c.optim.warmup_steps = 4000
    c.train.num_train_steps = 500_000
    return c


# -- Jet --------------------------------------------------------------------------------------

# Jet's spatial splits where the image has room for stripes.
JET_STRIPE_SPLITS = "checkerboard,checkerboard-inv,vstripes,vstripes-inv,hstripes,hstripes-inv"
JET_VARIANTS = {"smoke": smoke, "cond": LABEL_COND}


def set_jet_lr(c: ml_collections.ConfigDict, lr: float) -> None:
    """Jet's peak learning rate ``lr``, with Jet's decoupled weight decay of 1e-5 per step at
    that rate (optax's adamw multiplies ``weight_decay`` by the learning rate)."""
    c.optim.update(lr=lr, weight_decay=1e-5 / lr)


def jet_paper_config(dataset: str) -> ml_collections.ConfigDict:
    """Jet with its ImageNet64 architecture (big_vision's ``configs/proj/jet/imagenet64.py``)
    on a catalog dataset: patch 4, 32 couplings (four channel couplings, then one spatial)
    whose networks are ViTs of 2 blocks, width 512, 8 heads, MLP 4x; lr 3e-4."""
    c = image_config("jet", dataset)
    c.model.update(
        patch_size=4,
        num_couplings=32,
        block_depth=2,
        width=512,
        num_heads=8,
        mlp_ratio=4,
        coupling_pattern="channels,channels,channels,channels,spatial",
        spatial_splits=JET_STRIPE_SPLITS,
    )
    set_jet_lr(c, 3e-4)
    return c


# -- TarFlow ----------------------------------------------------------------------------------


def tarflow_variants(noise_sigma: float) -> dict[str, Variant]:
    """The variants of every TarFlow config. ``gen``: TarFlow's generation mode, Gaussian
    noise augmentation of std ``noise_sigma`` on the unit scale (TarFlow's sigma is on its
    [-1, 1] scale, twice ours; sample with ``--denoise``); ``linear``: the annealed guidance
    schedule."""
    return {
        "smoke": smoke,
        "cond": LABEL_COND,
        "gen": {"model": dict(noise_sigma=noise_sigma)},
        "linear": {"model": dict(guidance_schedule="linear")},
    }


def tarflow_paper_config(dataset: str) -> ml_collections.ConfigDict:
    """TarFlow with the paper's large-image settings on a catalog dataset: patch 2, 8 blocks;
    AdamW lr 1e-4 (1000 warmup steps), batch 256, EMA 0.9999."""
    c = image_config("tarflow", dataset)
    c.model.update(patch_size=2, num_blocks=8)
    c.optim.update(lr=1e-4, warmup_steps=1000)
    c.train.update(batch_size=256, ema_decay=0.9999)
    return c


# -- toy tables -------------------------------------------------------------------------------


def toy_config() -> ml_collections.ConfigDict:
    """Every field of a toy-table experiment (``experiments.toy_tables``), locked: the seed
    table, the joint and the label-conditioned spline flows, and the checks' bounds."""
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
    c.lock()
    return c


# The toy tables' variants. ``smoke``: fewer steps and looser bounds, the tests' setting (the
# cubature's error estimate is pessimistic: the true error is far smaller).
TOY_VARIANTS = {
    "smoke": {
        "train": dict(num_train_steps=1000, conditional_num_train_steps=3000),
        "eval": dict(quadrature_tol=1e-4),
        "check": dict(cell_tol=0.02, zero_cell_tol=0.01, nll_gap_bits=0.03),
    }
}
