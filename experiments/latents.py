"""Latent-space tools on a trained run: round trip, interpolation, class direction, label swap.

    python -m experiments.latents --workdir=runs/digits [--split=test] [--pairs=4] \\
        [--steps=8] [--classes=0,1] [--alphas=-1,-0.5,0,0.5,1,1.5] [--rows=6] \\
        [--checkpoint=best|latest] [--params=auto|ema|raw]

Encodes every image of the split at its mid-cell dequantization ``x = (v + 0.5) / K``
(conditional runs: under its true label), decodes it back and reports the largest
``|x - f^-1(f(x))|`` and the fraction of images that quantize back to themselves. Writes,
into ``<workdir>/latents/``:

* ``interpolation.png``: one row per pair of images (chosen with ``--seed``): the left image
  (data), the decoded linear interpolation of the two latents at ``--steps`` values of t from
  0 to 1 (both ends: the two images' own round trips; conditional runs interpolate the
  label too, as class weights), the right image (data);
* ``class_direction_<a>_to_<b>.png`` (datasets with labels): rows are images of class a,
  columns the slider values alpha of ``z + alpha (mean z of class b - mean z of class a)``
  (alpha = 0: the image itself), decoded (conditional runs: under label a);
* ``label_swap.png`` (conditional runs): columns are images, row y each image's latent
  decoded under label y (the row of its own label: the image itself);
* ``latents_<split>.json``: the numbers, the images used and the provenance.

The names above are those of the default ``--split=test``; another split's PNGs end in
``_<split>`` (``interpolation_train.png``), so that each JSON names pictures of its own split.

Works for every model family with an inverse (``flows.latents``).
"""

import math
import os
import time

import jax
import numpy as np
from absl import flags
from tqdm import tqdm

from experiments import cli
from flows import latents as lat
from flows import plotting
from flows import workdir as wd
from flows.errors import ConfigError
from flows.models.base import is_conditional
from flows.provenance import provenance
from flows.train.restore import load_run

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "validation", "train"], "Which split.")
_PAIRS = flags.DEFINE_integer("pairs", 4, "Image pairs to interpolate between (rows).")
_STEPS = flags.DEFINE_integer("steps", 8, "Interpolation points per pair, t = 0 and 1 included.")
_CLASSES = flags.DEFINE_list(
    "classes", None, "a,b: the class direction from class a to class b (default 0,1)."
)
_ALPHAS = flags.DEFINE_list(
    "alphas", ["-1", "-0.5", "0", "0.5", "1", "1.5"], "Slider values of the class direction."
)
_ROWS = flags.DEFINE_integer("rows", 6, "Images per class-direction and label-swap grid.")
_PARAMS = flags.DEFINE_enum("params", "auto", ["auto", "ema", "raw"], "Parameters to use.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Encoding/decoding batch size (0: the config's).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the choice of interpolation pairs.", lower_bound=0)
flags.mark_flags_as_required(["workdir"])


def _checked_flags() -> dict:
    """The flags that need no model, checked before anything is loaded."""
    for name, flag, least in (("pairs", _PAIRS, 1), ("steps", _STEPS, 2), ("rows", _ROWS, 1)):
        if flag.value < least:
            raise ConfigError(f"--{name} must be at least {least}, got {flag.value}")
    if _BATCH.value < 0:
        raise ConfigError(f"--batch_size must be >= 0, got {_BATCH.value}")
    try:
        alphas = [float(a) for a in _ALPHAS.value]
    except ValueError:
        raise ConfigError(f"--alphas must be numbers, got {','.join(_ALPHAS.value)}") from None
    if not alphas or not all(math.isfinite(a) for a in alphas):
        raise ConfigError(f"--alphas must be finite numbers, got {','.join(_ALPHAS.value)}")
    classes = None
    if _CLASSES.value is not None:
        try:
            classes = [int(c) for c in _CLASSES.value]
        except ValueError:
            classes = None
        if classes is None or len(classes) != 2 or classes[0] == classes[1]:
            raise ConfigError(
                f"--classes must be two different class numbers a,b, got {','.join(_CLASSES.value)}"
            )
    return {"alphas": alphas, "classes": classes}


def _check_classes(classes, num_classes: int) -> list[int] | None:
    """The two classes of the class direction (default 0,1), checked against the run's
    number of classes (``data_info.json``, before anything is loaded); None when the dataset
    has no labels and none were asked for."""
    if num_classes < 2:
        if classes is not None:
            raise ConfigError("--classes needs a dataset with labels; this run's has none")
        return None
    classes = classes or [0, 1]
    for c in classes:
        if not 0 <= c < num_classes:
            raise ConfigError(f"--classes: class {c} is not in 0..{num_classes - 1}")
    return classes


def _nonfinite(blank, num_decoded: int) -> dict:
    """The JSON fields of a picture's decodes: how many, how many were not finite (drawn
    blank), and the ``[row, column]`` cells of those."""
    return {
        "num_decoded": int(num_decoded),
        "num_nonfinite": int(np.sum(blank)),
        "nonfinite_cells": np.argwhere(blank).tolist(),
    }


def _interpolation(model, enc, data, pairs, steps, seed, batch_size, out) -> dict:
    """``interpolation.png``: per pair, left image | decoded path t = 0..1 | right image."""
    n = data.num_examples
    chosen = np.random.default_rng(seed).choice(n, 2 * pairs, replace=False).reshape(pairs, 2)
    z0, z1 = lat.take(enc.latents, chosen[:, 0]), lat.take(enc.latents, chosen[:, 1])
    path = lat.interpolate(z0, z1, steps)
    context = None
    if is_conditional(model):  # the label moves along with the latent
        y0, y1 = enc.labels[chosen[:, 0]], enc.labels[chosen[:, 1]]
        context = lat.interpolate_labels(y0, y1, steps, model.num_classes)
    images, finite = lat.decode_levels(
        model, path, context, num_bins=data.num_bins, batch_size=batch_size
    )
    images = images.reshape(pairs, steps, *data.image_shape)
    ends, _ = data.read(chosen.reshape(-1))  # the data columns
    ends = ends.reshape(pairs, 2, *data.image_shape)
    rows = [np.concatenate([ends[p, :1], images[p], ends[p, 1:]]) for p in range(pairs)]
    # The data columns are always finite.
    blank = np.pad(~finite.reshape(pairs, steps), ((0, 0), (1, 1)))
    labelled = data.num_classes > 1
    plotting.save_grid(
        out,
        rows,
        data.num_bins,
        blank=blank,
        groups=[("image", 1), (f"decoded, t = 0 to 1 in {steps} steps", steps), ("image", 1)],
        row_labels=[f"{a} to {b}" for a, b in enc.labels[chosen]] if labelled else None,
        corner="labels" if labelled else None,
        title=f"linear interpolation between the latents of two {data.name} images"
        + (", the label too" if is_conditional(model) else ""),
    )
    return {
        **_nonfinite(blank, pairs * steps),
        "file": out,
        "pairs": chosen.tolist(),
        "pair_labels": enc.labels[chosen].tolist(),
        "t": lat.interpolation_times(steps).tolist(),
        "columns": "left image (data), decoded latents at t (t = 0: the left image's round "
        "trip, t = 1: the right's), right image (data)",
        "decoded_under": "class weights (1 - t) onehot(left label) + t onehot(right label)"
        if is_conditional(model)
        else None,
    }


def _class_direction(model, enc, data, classes, alphas, rows, batch_size, out) -> dict:
    """``class_direction_<a>_to_<b>.png``: images of class a, moved by alpha d, decoded."""
    a, b = classes
    direction = lat.class_direction(enc.latents, enc.labels, a, b)
    chosen = np.flatnonzero(enc.labels == a)[:rows]
    moved = lat.shift_along(lat.take(enc.latents, chosen), direction, alphas)
    labels = np.full((len(chosen) * len(alphas),), a) if is_conditional(model) else None
    images, finite = lat.decode_levels(
        model, moved, labels, num_bins=data.num_bins, batch_size=batch_size
    )
    rows = images.reshape(len(chosen), len(alphas), *data.image_shape)
    plotting.save_grid(
        out,
        rows,
        data.num_bins,
        blank=~finite.reshape(len(chosen), len(alphas)),
        groups=[(f"alpha={alpha:g}", 1) for alpha in alphas],
        row_labels=[str(i) for i in chosen],
        corner="image",
        title=f"images of class {a} + alpha (mean latent of class {b} - of class {a})"
        + (f", decoded under label {a}" if is_conditional(model) else ""),
    )
    dims = sum(int(np.prod(z.shape)) for z in jax.tree.leaves(direction))
    norm = lat.tree_norm(direction)
    return {
        **_nonfinite(~finite.reshape(len(chosen), len(alphas)), finite.size),
        "file": out,
        "from_class": a,
        "to_class": b,
        "num_from": int(np.sum(enc.labels == a)),
        "num_to": int(np.sum(enc.labels == b)),
        "alphas": alphas,
        "images": chosen.tolist(),
        "direction_norm": norm,
        "direction_rms": norm / math.sqrt(dims),
        "latent_dims": dims,
        "decoded_under": f"label {a}" if is_conditional(model) else None,
    }


def _label_swap(model, enc, data, rows, batch_size, out) -> dict:
    """``label_swap.png``: the first ``rows`` images' latents, each decoded under every label."""
    chosen = np.arange(min(rows, data.num_examples))
    swapped, labels = lat.label_swap(lat.take(enc.latents, chosen), model.num_classes)
    images, finite = lat.decode_levels(
        model, swapped, labels, num_bins=data.num_bins, batch_size=batch_size
    )
    # A row per label: row y holds every image's latent decoded under label y.
    rows = images.reshape(len(chosen), model.num_classes, *data.image_shape).swapaxes(0, 1)
    blank = ~finite.reshape(len(chosen), model.num_classes).T
    plotting.save_grid(
        out,
        rows,
        data.num_bins,
        blank=blank,
        groups=[(f"image {i} ({y})", 1) for i, y in zip(chosen, enc.labels[chosen], strict=True)],
        row_labels=[str(y) for y in range(model.num_classes)],
        corner="label",
        title="each image's latent decoded under every label (its own label in brackets)",
    )
    return {
        **_nonfinite(blank, finite.size),
        "file": out,
        "images": chosen.tolist(),
        "image_labels": enc.labels[chosen].tolist(),
        "rows": f"labels 0..{model.num_classes - 1}",
        "columns": "images",
    }


def summary_line(record: dict) -> str:
    """One line: the round trip's error with units, and the provenance."""
    return (
        f"round trip of {record['split']} ({record['num_examples']} images at mid-cell x = "
        f"(v + 0.5)/{record['num_bins']}, {record['dtype']}): max |x - f^-1(f(x))| = "
        f"{record['reconstruction_max_abs_error']:.2e} on the unit scale "
        f"({record['reconstruction_max_abs_error_levels']:.2e} levels), "
        f"{record['num_exact_reconstructions']}/{record['num_examples']} images quantize back "
        f"exactly; {record['parameters']} params, step {record['checkpoint_step']}"
        + _nonfinite_note(record)
    )


def _nonfinite_note(record: dict) -> str:
    """``"; 5 of 36 decoded images in class_direction_0_to_1.png non-finite (...)"`` for
    each picture with any, else empty."""
    notes = []
    for key in ("interpolation", "class_direction", "label_swap"):
        part = record.get(key)
        if part and part["num_nonfinite"]:
            notes.append(
                f"; {part['num_nonfinite']} of {part['num_decoded']} decoded images in "
                f"{os.path.basename(part['file'])} "
                "non-finite (the inverse overflowed; drawn blank)"
            )
    return "".join(notes)


def main(argv):
    cli.no_extra_arguments(argv)
    checked = _checked_flags()
    cli.check_run_workdir(_WORKDIR.value)  # "not a training workdir" before anything else
    num_classes = int(wd.load_data_info(_WORKDIR.value)["num_classes"] or 1)
    classes = _check_classes(checked["classes"], num_classes)
    model, config, info = load_run(
        _WORKDIR.value, checkpoint=_CHECKPOINT.value, use_ema=cli.use_ema(_PARAMS.value)
    )
    data = cli.split_of_run(config, _SPLIT.value)  # the latents are kept, not the images
    if 2 * _PAIRS.value > data.num_examples:
        raise ConfigError(
            f"--pairs={_PAIRS.value} needs {2 * _PAIRS.value} images; {data.name} has "
            f"{data.num_examples}"
        )
    for c in classes or ():
        if not np.any(data.labels == c):
            raise ConfigError(f"--classes: class {c} has no image in {data.name}")
    batch_size = _BATCH.value or config.eval.batch_size
    out_dir = os.path.join(_WORKDIR.value, wd.LATENTS)
    os.makedirs(out_dir, exist_ok=True)
    suffix = "" if _SPLIT.value == "test" else f"_{_SPLIT.value}"

    def png(name):
        return os.path.join(out_dir, f"{name}{suffix}.png")

    t0 = time.time()
    with tqdm(total=data.num_examples, desc=f"encode {data.name}", unit="img") as bar:
        enc = lat.encode_split(model, data, batch_size=batch_size, progress=bar.update)
    record = {
        "split": data.name,
        "num_examples": int(data.num_examples),
        "num_bins": int(data.num_bins),
        "image_shape": list(data.image_shape),
        "compute_dtype": config.model.get("compute_dtype", "float32"),
        "conditional": is_conditional(model),
        **enc.reconstruction(),
    }
    record["interpolation"] = _interpolation(
        model,
        enc,
        data,
        _PAIRS.value,
        _STEPS.value,
        _SEED.value,
        batch_size,
        png("interpolation"),
    )
    if classes is not None:
        a, b = classes
        record["class_direction"] = _class_direction(
            model,
            enc,
            data,
            classes,
            checked["alphas"],
            _ROWS.value,
            batch_size,
            png(f"class_direction_{a}_to_{b}"),
        )
    if is_conditional(model):
        record["label_swap"] = _label_swap(
            model, enc, data, _ROWS.value, batch_size, png("label_swap")
        )
    record.update(
        info, dataset=config.data.name, latents_s=time.time() - t0, provenance=provenance()
    )
    path = os.path.join(out_dir, f"latents_{_SPLIT.value}.json")
    wd.write_json(path, record)
    print(f"{summary_line(record)} -> {out_dir}")


if __name__ == "__main__":
    cli.run(main)
