"""Every config field, with its default. Config files start from ``base_config()`` and set
what differs; the returned ConfigDict is locked, so a misspelt key (in a file or in a
``--config.a.b=`` override) fails at once with the key named.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from flows.data import DATA_CONFIG_DEFAULTS
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


def apply_catalog_variants(c: ml_collections.ConfigDict, arg: str | None, name: str) -> None:
    """The variants shared by the catalog-dataset configs (mnist, cifar10), comma-separated:
    ``cond`` (Glow's label-conditioned top prior with weight_y = 0.01) and ``smoke`` (a tiny
    model and a few steps, for the tests on mocked data)."""
    variants = set(arg.split(",")) if arg else set()
    unknown = variants - {"cond", "smoke"}
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)} of {name}; known: cond, smoke")
    if "cond" in variants:
        c.model.conditional = True
        c.model.condition_on = "top"
        c.model.weight_y = 0.01
    if "smoke" in variants:
        c.data.validation_size = 8
        c.model.num_levels = 2
        c.model.num_steps = 1
        c.model.hidden_channels = 8
        c.train.batch_size = 8
        c.train.init_batch_size = 16
        c.train.num_train_steps = 4
        c.train.log_every = 2
        c.train.eval_every = 2
        c.train.checkpoint_every = 2
        c.train.num_grid_samples = 4
        c.optim.warmup_steps = 1
        c.eval.batch_size = 8
