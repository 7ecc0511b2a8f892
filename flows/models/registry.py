"""The model registry: ``config.model.name`` -> a family's model class and its config fields.

A family is its model class, registered where it is defined (``flows/models/glow.py``)::

    @register_model("glow")
    class Glow(DensityModel):
        def __init__(self, image_shape, num_classes=None, *, num_levels: int = 3, ...,
                     rngs: nnx.Rngs): ...

The constructor declares the family's fields of ``config.model`` (``config_fields``):
``build_model`` passes ``image_shape`` and ``num_classes`` (the positional parameters) and
``rngs``; every other keyword-only parameter is a config field, with the parameter's default
(it must have one), and is documented once, in the constructor's docstring. A field whose
default is None takes the type an override must have from its annotation (``float | None``:
float). Adding a field to a family is one edit: a keyword-only parameter with its default
and its line in the docstring. Validity checks live in the constructor (one-line
``ConfigError``s), so a model built in Python and one built from a config are checked alike.

``config.model`` holds ``name``, ``conditional`` (p(x|y) with ``num_classes`` taken from the
dataset), ``dequantization`` with the sizes of a variational dequantizer (attached to any
family's model here, ``flows.bijectors.dequantizer``), ``label_dropout`` and ``noise_sigma``
(training options any family takes, ``flows.train.objectives``) and the family's own fields.
``build_model`` is the only place that maps a config to a model; the trainer, evaluation,
sampling and compare call it and then use only the ``DensityModel`` interface
(``flows.models.base``). ``describe_model`` is the short text of a config in compare's tables
(a family's part from its ``DensityModel.describe_config``). Adding a family is one module
with a registered ``DensityModel`` subclass (imported by ``flows.models``), plus its config
files.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from flax import nnx

from flows.bijectors.dequantizer import make_dequantizer
from flows.errors import ConfigError
from flows.models.base import DensityModel

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

# The parameters of a family's constructor that build_model passes itself: the positional
# ones (image_shape, num_classes) and this keyword-only one; the other keyword-only ones
# are the family's config fields.
BUILD_KEYWORDS = ("rngs",)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    name: str
    model_class: type[DensityModel]
    defaults: Mapping[str, Any]  # the family's own fields of config.model, with defaults
    optional_types: Mapping[str, type]  # types of fields whose default is None

    def config_defaults(self) -> dict[str, Any]:
        """Every field of ``config.model`` for this family, with its default."""
        return {**COMMON_FIELDS, "name": self.name, **self.defaults}

    def build(self, values: Mapping[str, Any], image_shape, num_classes, *, rngs) -> DensityModel:
        """The model of ``values`` (every field of ``config.model``)."""
        fields = {k: values[k] for k in self.defaults}
        return self.model_class(image_shape, num_classes, **fields, rngs=rngs)


def _field_type(annotation) -> type | None:
    """The type an annotation names, without None (``float | None``: float; ``tuple[int,
    int] | None``: tuple); None when it names no single type (or there is none)."""
    if annotation is inspect.Parameter.empty:
        return None
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else None
    annotation = typing.get_origin(annotation) or annotation
    return annotation if isinstance(annotation, type) else None


def config_fields(model_class: type) -> tuple[dict[str, Any], dict[str, type]]:
    """``(defaults, optional_types)`` of a family from its constructor's signature: every
    keyword-only parameter but ``BUILD_KEYWORDS`` is a config field with its default; the
    fields whose default is None get their type from their annotation."""
    parameters = list(inspect.signature(model_class.__init__, eval_str=True).parameters.values())
    positional = [p.name for p in parameters[1:] if p.kind in _POSITIONAL]
    keywords = {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
    if len(positional) != 2 or not set(BUILD_KEYWORDS) <= keywords:
        raise TypeError(
            f"{model_class.__name__}.__init__ must take (self, image_shape, num_classes, *, "
            f"<config fields>, {', '.join(BUILD_KEYWORDS)}); its positional parameters are "
            f"{positional}"
        )
    defaults, optional_types = {}, {}
    for p in parameters:
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.name in BUILD_KEYWORDS:
            continue
        where = f"{model_class.__name__}.__init__'s keyword-only parameter {p.name!r}"
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{where} is a config field and needs a default")
        defaults[p.name] = p.default
        if p.default is None:
            optional_types[p.name] = _field_type(p.annotation)
            if optional_types[p.name] is None:
                raise TypeError(
                    f"{where} defaults to None: annotate it with its type (e.g. float | None)"
                )
    return defaults, optional_types


_FAMILIES: dict[str, ModelFamily] = {}


def register_model(name: str):
    """Class decorator: registers the ``DensityModel`` subclass as the family ``name``, its
    config fields read from its constructor (``config_fields``)."""

    def decorator(model_class: type[DensityModel]) -> type[DensityModel]:
        if not (isinstance(model_class, type) and issubclass(model_class, DensityModel)):
            raise TypeError(f"register_model({name!r}) decorates a DensityModel subclass")
        defaults, optional_types = config_fields(model_class)
        clash = set(defaults) & set(COMMON_FIELDS)
        if clash:
            raise ValueError(f"model family {name!r} redefines common fields {sorted(clash)}")
        _FAMILIES[name] = ModelFamily(name, model_class, defaults, optional_types)
        return model_class

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
    """A short text of a model config, for compare's tables: the family's
    (``DensityModel.describe_config``; by default its name and the fields that differ from
    their defaults), then the common fields that are not off. A family not registered here
    is named as it is."""
    name = model_config.get("name", "?")
    if name not in _FAMILIES:
        return f"{name} (family not registered)"
    family = _FAMILIES[name]
    values = {**family.config_defaults(), **model_config}
    text = family.model_class.describe_config(values)
    if text is None:
        changed = [
            f"{k}={v}"
            for k, v in model_config.items()
            if k not in COMMON_FIELDS and v != family.defaults.get(k)
        ]
        text = " ".join([name, *changed])
    if values["dequantization"] != "uniform":
        text += f", {values['dequantization']} dequantization"
    if values["label_dropout"]:
        text += f", label dropout {values['label_dropout']:g}"
    if values["noise_sigma"]:
        text += f", noise sigma {values['noise_sigma']:g}"
    return text


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
