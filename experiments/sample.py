"""Sample image grids from a trained run.

    python -m experiments.sample --workdir=runs/digits --temperature=0.7 --num=64
    python -m experiments.sample --workdir=runs/digits_cond --label=3
    python -m experiments.sample --workdir=runs/digits_cond --class_grid \\
        --temperatures=0.5,0.7,0.85,1.0
    python -m experiments.sample --workdir=runs/tarflow_digits_cond --class_grid --guidance=2
    python -m experiments.sample --workdir=runs/tarflow_digits_gen --denoise

``--label=y`` samples class y; ``--class_grid`` draws one row per class and a column group
per temperature (so it takes no ``--label``). ``--guidance=w`` (classifier-free guidance)
needs a family with guidance (Jet, TarFlow; Glow has none) and a conditional run trained
with ``model.label_dropout > 0``; ``--denoise`` one trained with ``model.noise_sigma > 0``
(``flows.models.base``).

Writes a PNG (``--out``, default in the workdir) and prints its path.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli
from flows import plotting
from flows.errors import ConfigError
from flows.likelihood import quantize
from flows.models import sample_compiled
from flows.train.restore import load_run

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.")
_NUM = flags.DEFINE_integer(
    "num", 64, "Number of samples (single-temperature grid).", lower_bound=1
)
_T = flags.DEFINE_float("temperature", 0.7, "Sampling temperature (std of the latents).")
_LABEL = flags.DEFINE_integer("label", None, "Class to sample (conditional runs).")
_CLASS_GRID = flags.DEFINE_bool("class_grid", False, "Rows = classes, columns = temperatures.")
_TEMPS = flags.DEFINE_list("temperatures", ["0.5", "0.7", "0.85", "1.0"], "For --class_grid.")
_PER_CELL = flags.DEFINE_integer(
    "per_temperature", 2, "Samples per class and temperature.", lower_bound=1
)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_GUIDANCE = flags.DEFINE_float("guidance", 0.0, "Classifier-free guidance weight (0: none).")
_DENOISE = flags.DEFINE_bool("denoise", False, "Denoise samples (noise-augmented runs).")
_OUT = flags.DEFINE_string("out", None, "Output PNG path.")
flags.mark_flags_as_required(["workdir"])
cli.finite_at_least(_T, 0)
cli.numbers_at_least(_TEMPS, 0)
cli.finite_at_least(_GUIDANCE, 0)
flags.register_multi_flags_validator(
    ["label", "class_grid"],
    lambda f: f["label"] is None or not f["class_grid"],
    message="--label and --class_grid do not go together (--class_grid draws every class); "
    "give one of them",
)


def main(argv):
    cli.no_extra_arguments(argv)
    cli.check_run_workdir(_WORKDIR.value)
    model, config, info = load_run(_WORKDIR.value)
    num_bins = info["num_bins"]
    key = jax.random.key(_SEED.value)
    conditional = model.num_classes is not None
    if (_LABEL.value is not None or _CLASS_GRID.value) and not conditional:
        raise ConfigError("--label and --class_grid need a label-conditioned run")
    if _LABEL.value is not None and not 0 <= _LABEL.value < model.num_classes:
        raise ConfigError(f"--label must be in 0..{model.num_classes - 1}, got {_LABEL.value}")
    model.check_guidance(_GUIDANCE.value)
    if _DENOISE.value and not model.noise_sigma > 0:
        raise ConfigError("--denoise needs a run trained with model.noise_sigma > 0")
    options = {"guidance": _GUIDANCE.value, "denoise": _DENOISE.value}

    def header(t):  # a column group's: the temperature, and the guidance weight when guided
        return f"T={t:g}" + (f" w={_GUIDANCE.value:g}" if _GUIDANCE.value else "")

    tag = (f"_w{_GUIDANCE.value:g}" if _GUIDANCE.value else "") + (
        "_denoised" if _DENOISE.value else ""
    )
    if _CLASS_GRID.value:
        temps = [float(t) for t in _TEMPS.value]
        rows = []
        for y in range(model.num_classes):
            labels = jnp.full((_PER_CELL.value,), y)
            row = []
            for i, t in enumerate(temps):
                k = jax.random.fold_in(jax.random.fold_in(key, y), i)
                row.append(sample_compiled(model, _PER_CELL.value, k, t, labels, **options))
            rows.append(np.asarray(quantize(jnp.concatenate(row), num_bins)))
        images = np.concatenate(rows)
        groups = [(header(t), _PER_CELL.value) for t in temps]
        row_labels = [str(y) for y in range(model.num_classes)]
        name = f"class_grid_T{'-'.join(_TEMPS.value)}{tag}.png"
        desc = f"rows: classes 0..{model.num_classes - 1}; column groups: T = {temps}"
    else:
        context = None
        if conditional:
            y = _LABEL.value
            context = jnp.full((_NUM.value,), y) if y is not None else jnp.arange(_NUM.value)
            context = context % model.num_classes
        x = sample_compiled(model, _NUM.value, key, _T.value, context, **options)
        images = np.asarray(quantize(x, num_bins))
        row_labels = None
        if conditional and _LABEL.value is None:  # sample i has label i % num_classes: row
            classes = range(min(model.num_classes, _NUM.value))
            rows = [images[y :: model.num_classes] for y in classes]
            row_labels = [str(y) for y in classes]
        else:
            rows = plotting.rows_of(images)
        groups = [(header(_T.value), len(rows[0]))]
        suffix = f"_label{_LABEL.value}" if _LABEL.value is not None else ""
        name = f"samples_T{_T.value}{suffix}{tag}.png"
        desc = f"T = {_T.value}" + (f", label {_LABEL.value}" if _LABEL.value is not None else "")
    out = _OUT.value or os.path.join(_WORKDIR.value, name)
    if _GUIDANCE.value:
        desc += f", guidance {_GUIDANCE.value:g}"
    if _DENOISE.value:
        desc += f", denoised (sigma {model.noise_sigma:g})"
    provenance = f"{info['parameters']} params, step {info['checkpoint_step']}"
    run_name = os.path.basename(os.path.normpath(_WORKDIR.value))
    title = "; ".join(
        part
        for part in (
            f"samples of {run_name} ({provenance})",
            f"class {_LABEL.value}" if _LABEL.value is not None else "",
            f"denoised (sigma {model.noise_sigma:g})" if _DENOISE.value else "",
        )
        if part
    )
    plotting.save_grid(
        out,
        rows,
        num_bins,
        groups=groups,
        row_labels=row_labels,
        corner="class" if row_labels else None,
        title=title,
    )
    print(f"{len(images)} samples ({desc}; {provenance}) -> {out}")


if __name__ == "__main__":
    cli.run(main)
