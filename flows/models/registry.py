"""The model registry: ``config.model.name`` -> a family's builder and its config fields.

A family registers itself in its own module (``flows/models/glow.py`` for Glow)::

    @register_model("glow", defaults={"num_levels": 3, ...}, optional_types={...})
    def build_glow(model_config, image_shape, num_classes, *, rngs) -> DensityModel: ...

``config.model`` holds ``name``, ``conditional`` (p(x|y) with ``num_classes`` taken from the
dataset), ``dequantization`` with the sizes of a variational dequantizer (attached to any
family's model here, ``flows.bijectors.dequantizer``), ``label_dropout`` and ``noise_sigma``
(training options any family takes, ``flows.train.objectives``) and the family's own fields.
``build_model`` is the only place that maps a config to a model; the trainer, evaluation,
sampling and compare call it and then use only the ``DensityModel`` interface
(``flows.models.base``). Adding a family is one module that calls ``register_model``
(imported by ``flows.models``), plus its config files.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from flows.bijectors.dequantizer import make_dequantizer
from flows.errors import ConfigError

# Fields every family's config.model has.
COMMON_FIELDS: dict[str, Any] = {
    "name": None,
    "conditional": False,  # True: p(x|y) with num_classes from the dataset
    # How integer images become continuous (flows.bijectors.dequantizer): 'uniform', or
    # 'variational' (a learned q(u|v), Flow++) with the sizes of its flow below.
    "dequantization": "uniform",
    "dequantizer_hidden_channels": 32,
    "dequantizer_steps": 4,
    "dequantizer_segments": 8,
    # Conditional models: the probability of training on an example without its label (the
    # all-zero "no label" context), which classifier-free guidance needs at sampling.
    "label_dropout": 0.0,
    # Std of Gaussian noise added to the training inputs on the unit scale (TarFlow's
    # generation mode; samples are then denoised, DensityModel.denoise). 0: none.
    "noise_sigma": 0.0,
}
DEQUANTIZER_FIELDS = {
    "dequantizer_hidden_channels": "hidden_channels",
    "dequantizer_steps": "num_steps",
    "dequantizer_segments": "num_segments",
}

Builder = Callable[..., nnx.Module]


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    name: str
    build: Builder  # build(model_config, image_shape, num_classes | None, *, rngs)
    defaults: Mapping[str, Any]  # the family's own fields of config.model, with defaults
    optional_types: Mapping[str, type]  # types of fields whose default is None
    describe: Callable[[Mapping[str, Any]], str] | None = None  # short text for tables

    def config_defaults(self) -> dict[str, Any]:
        """Every field of ``config.model`` for this family, with its default."""
        return {**COMMON_FIELDS, "name": self.name, **self.defaults}

    def summary(self, model_config: Mapping[str, Any]) -> str:
        """A short description of a model config (for ``compare``'s tables)."""
        values = {**self.config_defaults(), **model_config}
        if self.describe is not None:
            text = self.describe(values)
        else:
            changed = [
                f"{k}={v}"
                for k, v in model_config.items()
                if k not in COMMON_FIELDS and v != self.defaults.get(k)
            ]
            text = " ".join([self.name, *changed])
        if values["dequantization"] != "uniform":
            text += f", {values['dequantization']} dequantization"
        if values["label_dropout"]:
            text += f", label dropout {values['label_dropout']:g}"
        if values["noise_sigma"]:
            text += f", noise sigma {values['noise_sigma']:g}"
        return text


_FAMILIES: dict[str, ModelFamily] = {}


def register_model(
    name: str,
    *,
    defaults: Mapping[str, Any],
    optional_types: Mapping[str, type] | None = None,
    describe: Callable[[Mapping[str, Any]], str] | None = None,
):
    """Decorator: registers ``build`` as the family ``name`` with its config ``defaults``
    (``optional_types``: the types of fields whose default is None; ``describe``: a short
    text of a model config for tables)."""
    clash = set(defaults) & set(COMMON_FIELDS)
    if clash:
        raise ValueError(f"model family {name!r} redefines common fields {sorted(clash)}")

    def decorator(build: Builder) -> Builder:
        _FAMILIES[name] = ModelFamily(
            name, build, dict(defaults), dict(optional_types or {}), describe
        )
        return build

    return decorator


def check_positive_ints(**fields) -> None:
    """A one-line ``ConfigError`` naming the first of ``fields`` (``config.model`` field name
    -> value) that is not a positive integer (booleans are not integers here)."""
    for name, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")


def unregister_model(name: str) -> None:
    """Removes a family (for tests that register a throwaway one)."""
    _FAMILIES.pop(name, None)


def model_families() -> list[str]:
    return sorted(_FAMILIES)


def describe_model(model_config: Mapping[str, Any]) -> str:
    """A short text of a model config; a family not registered here is named as it is."""
    name = model_config.get("name", "?")
    if name not in _FAMILIES:
        return f"{name} (family not registered)"
    return _FAMILIES[name].summary(model_config)


def with_defaults(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """``model_config`` with the fields it lacks set to its family's defaults.

    Fields are added to a family (or to ``COMMON_FIELDS``) only with a default that keeps
    the behaviour models had before the field existed (``dequantization='uniform'``, a spline
    setting only a spline coupling reads), so a config written before a field existed means
    that default: an older workdir's config.json, completed with this, is the config its
    run used. A family that is not registered is returned as it is."""
    model_config = dict(model_config)
    if model_config.get("name") not in _FAMILIES:
        return model_config
    return {**_FAMILIES[model_config["name"]].config_defaults(), **model_config}


def get_family(name: str) -> ModelFamily:
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model.name {name!r}; registered: {model_families()}")
    return _FAMILIES[name]


def build_model(model_config, image_shape, num_classes: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """The model ``config.model`` describes, for images of ``image_shape`` and a dataset of
    ``num_classes`` classes (used when ``model_config.conditional``)."""
    family = get_family(model_config["name"])
    known = set(family.config_defaults())
    unknown = sorted(set(model_config.keys()) - known)
    if unknown:
        raise ConfigError(
            f"model.name={family.name!r} has no field(s) {unknown}; its fields: {sorted(known)}"
        )
    values = {**family.config_defaults(), **{k: model_config[k] for k in model_config.keys()}}
    label_dropout, noise_sigma = values["label_dropout"], values["noise_sigma"]
    if not isinstance(label_dropout, int | float) or not 0 <= label_dropout < 1:
        raise ConfigError(f"model.label_dropout must be in [0, 1), got {label_dropout!r}")
    if label_dropout and not values["conditional"]:
        raise ConfigError("model.label_dropout needs model.conditional=True")
    if not isinstance(noise_sigma, int | float) or not 0 <= noise_sigma < math.inf:
        raise ConfigError(f"model.noise_sigma must be a number >= 0, got {noise_sigma!r}")
    image_shape = tuple(int(d) for d in image_shape)
    model = family.build(
        values,
        image_shape,
        int(num_classes) if values["conditional"] else None,
        rngs=rngs,
    )
    if values["dequantization"] != "uniform":
        sizes = {arg: int(values[field]) for field, arg in DEQUANTIZER_FIELDS.items()}
        # The family's convolution kernels ('auto' for a family without the field).
        sizes["conv_impl"] = values.get("conv_impl", "auto")
        model.dequantizer = make_dequantizer(
            values["dequantization"], image_shape, rngs=rngs, **sizes
        )
    model.label_dropout = float(label_dropout)
    model.noise_sigma = float(noise_sigma)
    return model
