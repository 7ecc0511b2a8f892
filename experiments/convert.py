"""Convert a reference implementation's checkpoint into a workdir the other tools read.

    python -m experiments.convert --source=ml-tarflow \\
        --checkpoint=afhq_model_8_768_8_8_0.07.pth --image_shape=256,256,3 --workdir=runs/afhq \\
        --dataset=afhq/256
    python -m experiments.sample --workdir=runs/afhq --class_grid --guidance=1 \\
        --temperatures=1.0 --per_temperature=2
    python -m experiments.evaluate --workdir=W (with the data of --dataset prepared)

``--source`` picks the converter (``LOADERS``: ``ml-tarflow``, apple/ml-tarflow's
``transformer_flow.Model``, ``flows.convert.ml_tarflow``; ``big-vision-jet``, big_vision's
Jet); ``--checkpoint`` is its file (``.pth`` needs PyTorch, ``pip install ".[convert]"``;
``.npz``: the state dict's arrays, no PyTorch); the architecture is read off the weights.
``--model_arg key=value`` (repeated) sets a ``config.model`` field the weights do not fix
(e.g. ``num_heads``, ``guidance_schedule=linear``, ``noise_sigma``). ``--dataset`` is the
data ``experiments.evaluate`` will read (a config dataset name such as ``imagenet64``, or a
TFDS name; ``afhq/256``: AFHQ read from its extracted folder, ``flows.data.afhq``) and
``--num_bins`` its levels per value (256: 8-bit images). The workdir is
``flows.convert.workdir``'s: config (its evaluation batch sized to the images), the
parameters as the step-0 checkpoint, and ``converted_from.json`` naming the source file and
its sha256.
"""

import ast
import importlib

from absl import flags

from configs.base import DATASETS, FAMILIES, base_config, finalize
from experiments import cli
from flows.errors import ConfigError
from flows.train import config_checks

# --source -> (module, its loader): load_checkpoint(path, image_shape, **model_fields)
# -> (model, config.model dict).
LOADERS = {
    "ml-tarflow": ("flows.convert.ml_tarflow", "load_checkpoint"),
    "big-vision-jet": ("flows.convert.big_vision_jet", "load_checkpoint"),
}

_SOURCE = flags.DEFINE_enum("source", None, list(LOADERS), "Which reference wrote --checkpoint.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The reference's checkpoint file.")
_IMAGE_SHAPE = flags.DEFINE_string("image_shape", None, "H,W,C of the model's images.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The new workdir to write.")
_MODEL_ARGS = flags.DEFINE_multi_string(
    "model_arg", [], "key=value: a config.model field the checkpoint does not fix (repeatable)."
)
_DATASET = flags.DEFINE_string(
    "dataset", "unspecified", "The data of the model (config.data.name) for evaluate."
)
_NUM_BINS = flags.DEFINE_integer(
    "num_bins", 256, "Levels per value of the model's data (256: 8-bit).", lower_bound=2
)
flags.mark_flags_as_required(["source", "checkpoint", "image_shape", "workdir"])


def parse_image_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--image_shape must be H,W,C (three positive integers), got {text!r}")
    return shape


def parse_model_args(items: list[str]) -> dict:
    """``["num_heads=12", "guidance_schedule=linear"]`` -> ``{"num_heads": 12, ...}``: each
    value a Python literal, else the string itself."""
    fields = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model_arg must be key=value, got {item!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        fields[key.strip()] = value
    return fields


def loader(source: str):
    """The ``load_checkpoint`` of ``source``; a converter missing from this checkout is a
    one-line error."""
    module_name, function = LOADERS[source]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise ConfigError(
            f"--source={source}: its converter {module_name} is not in this checkout"
        ) from None
    return getattr(module, function)


# Values (images x dimensions x classes: a conditional model's evaluation runs every class)
# in one evaluation batch of a converted model. The default eval batch of 500 fits 8x8
# digits; for ml-tarflow's AFHQ model (256x256x3, 3 classes) it asked for a 32 GB buffer;
# this budget gives that model 3.
EVAL_BATCH_VALUES = 2**21


def run_config(model_config: dict, dataset: str, image_shape, num_classes: int | None):
    """The full config of a converted run: every field's default, the family's shared
    settings (optimizer), the converted ``config.model`` and the dataset; no EMA (the
    parameters are the checkpoint's); an evaluation batch sized to the images
    (``EVAL_BATCH_VALUES``)."""
    c = base_config(model_config["name"])
    c.update(FAMILIES.get(model_config["name"], {}))
    c.model.update(model_config)
    c.data.update(DATASETS.get(dataset, {"name": dataset}))
    c.train.ema_decay = 0.0
    values = image_shape[0] * image_shape[1] * image_shape[2] * (num_classes or 1)
    c.eval.batch_size = max(1, min(c.eval.batch_size, EVAL_BATCH_VALUES // values))
    c = finalize(c)
    config_checks.check_config(c)
    return c


def main(argv):
    cli.no_extra_arguments(argv)
    from flows.convert.workdir import (  # after flag checks
        checkpoint_origin,
        num_parameters,
        write_workdir,
    )

    shape = parse_image_shape(_IMAGE_SHAPE.value)
    fields = parse_model_args(_MODEL_ARGS.value)
    model, model_config = loader(_SOURCE.value)(_CHECKPOINT.value, shape, **fields)
    config = run_config(model_config, _DATASET.value, shape, model.num_classes)
    record = write_workdir(
        _WORKDIR.value,
        model,
        config,
        num_bins=_NUM_BINS.value,
        origin=checkpoint_origin(_SOURCE.value, _CHECKPOINT.value),
        train=f"{_SOURCE.value} checkpoint",
    )
    print(
        f"{_CHECKPOINT.value} ({_SOURCE.value}, {num_parameters(model):,} parameters, sha256 "
        f"{record['sha256'][:12]}) -> {_WORKDIR.value}; sample: python -m experiments.sample "
        f"--workdir={_WORKDIR.value}"
    )


if __name__ == "__main__":
    cli.run(main)
