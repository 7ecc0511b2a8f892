"""Sample image grids from a trained run.

    python -m experiments.sample --workdir=runs/digits --temperature=0.7 --num=64
    python -m experiments.sample --workdir=runs/digits_cond --label=3
    python -m experiments.sample --workdir=runs/digits_cond --class_grid \\
        --temperatures=0.5,0.7,0.85,1.0
    python -m experiments.sample --workdir=runs/tarflow_digits_cond --class_grid --guidance=2
    python -m experiments.sample --workdir=runs/tarflow_digits_gen --denoise
    python -m experiments.sample --workdir=runs/tarflow_digits_cond --sampler=jacobi \\
        --jacobi_tol=1e-4 [--jacobi_max_iters=8 --jacobi_chunk=4]
    python -m experiments.sample --workdir=runs/tarflow_digits_cond --score \\
        --guidances=0,0.5,1,2,4 --per_class=100 --temperature=1

``--label=y`` samples class y; ``--class_grid`` draws one row per class and a column group
per temperature (so it takes no ``--label``). ``--guidance=w`` (classifier-free guidance)
needs a family with guidance (Jet, TarFlow; Glow has none) and a conditional run trained
with ``model.label_dropout > 0``; ``--denoise`` one trained with ``model.noise_sigma > 0``
(``flows.models.base``).

``--sampler`` says how an autoregressive family (TarFlow) inverts each block: token by token
(``sequential``), by parallel Jacobi updates of ``--jacobi_chunk`` tokens at a time until no
value moves more than ``--jacobi_tol`` (or ``--jacobi_max_iters`` updates), or ``auto``: the
faster of the two for each block, measured on the first batch (``flows.models.jacobi``);
families with a closed-form inverse take ``sequential`` or ``auto`` only.

Writes a PNG (``--out``, default in the workdir) and prints its path; beside it a JSON
record of the sampler (each block's method, ``auto``'s reason, the Jacobi updates of each
block in each call, the seconds of each call).

``--score`` draws no grid: it draws ``--per_class`` samples of every class for each guidance
weight of ``--guidances`` (default: ``--guidance``) and scores them without FID
(``flows.sample_scores``): the accuracy of the model's own Bayes classifier on them, their
bits/dim under the unguided and the guided model, their diversity against the test split's,
and the test split's bits/dim under each guided model. Writes ``guidance_sweep.json`` and
``guidance_sweep.png`` (bits/dim against sample accuracy) in the workdir, or ``--out``
(a PNG path; the JSON beside it), and prints the table.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli
from flows import plotting
from flows import workdir as wd
from flows.errors import ConfigError
from flows.likelihood import quantize
from flows.models import SAMPLERS, make_sampler, sample_and_stats_compiled
from flows.models.jacobi import DEFAULT_TOL
from flows.provenance import provenance
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
_SAMPLER = flags.DEFINE_enum(
    "sampler",
    "sequential",
    list(SAMPLERS),
    "How an autoregressive family (TarFlow) inverts its blocks: token by token, by Jacobi "
    "updates, or auto (the faster per block, measured on the first batch).",
)
_JACOBI_TOL = flags.DEFINE_float(
    "jacobi_tol", DEFAULT_TOL, "Jacobi: stop when no value moved more than this in an update."
)
_JACOBI_MAX_ITERS = flags.DEFINE_integer(
    "jacobi_max_iters",
    None,
    "Jacobi: at most this many updates per chunk (default: the chunk's size, which is exact).",
    lower_bound=1,
)
_JACOBI_CHUNK = flags.DEFINE_integer(
    "jacobi_chunk", None, "Jacobi: tokens updated together (default: all of a block's).",
    lower_bound=1,
)  # fmt: skip
_SCORE = flags.DEFINE_bool(
    "score", False, "Score samples of every class for each of --guidances (no grid)."
)
_PER_CLASS = flags.DEFINE_integer("per_class", 100, "--score: samples per class.", lower_bound=1)
_GUIDANCES = flags.DEFINE_list(
    "guidances", None, "--score: the guidance weights to score (default: --guidance)."
)
flags.mark_flags_as_required(["workdir"])
cli.finite_at_least(_T, 0)
cli.numbers_at_least(_TEMPS, 0)
cli.finite_at_least(_GUIDANCE, 0)
cli.finite_at_least(_JACOBI_TOL, 0)
cli.numbers_at_least(_GUIDANCES, 0)
flags.register_multi_flags_validator(
    ["label", "class_grid"],
    lambda f: f["label"] is None or not f["class_grid"],
    message="--label and --class_grid do not go together (--class_grid draws every class); "
    "give one of them",
)
flags.register_multi_flags_validator(
    ["score", "label", "class_grid", "denoise"],
    lambda f: not f["score"] or (f["label"] is None and not f["class_grid"] and not f["denoise"]),
    message="--score draws every class and no grid: it takes no --label, --class_grid or --denoise",
)
flags.register_multi_flags_validator(
    ["score", "guidances"],
    lambda f: f["score"] or f["guidances"] is None,
    message="--guidances is for --score (a grid takes one --guidance)",
)


def _sampler(model, num, key, temperature, context, guidance):
    """The sampler the flags ask for; ``auto`` measured on this batch (``num`` latents of
    ``key`` at ``temperature``, labels ``context``, guidance weight ``guidance``)."""
    name = _SAMPLER.value
    options = make_sampler(
        "jacobi" if name == "auto" else name,
        tol=_JACOBI_TOL.value,
        max_iters=_JACOBI_MAX_ITERS.value,
        chunk=_JACOBI_CHUNK.value,
    )
    if name != "auto":
        model.check_sampler(options)
        return options
    latents = model.sample_latents(key, num, temperature)
    return model.choose_sampler(latents, context=context, guidance=guidance, sampler=options)


def _sampler_record(sampler) -> dict:
    methods = sampler.methods
    return {
        "name": _SAMPLER.value,
        "methods": methods if isinstance(methods, str) else list(methods),
        "jacobi_tol": sampler.tol,
        "jacobi_max_iters": sampler.max_iters,
        "jacobi_chunk": sampler.chunk,
        "reason": sampler.reason,
    }


def _run_info(info) -> dict:
    return {
        "workdir": os.path.normpath(_WORKDIR.value),
        "checkpoint": info["checkpoint"],
        "checkpoint_step": info["checkpoint_step"],
        "parameters": info["parameters"],
    }


def score(model, config, info) -> None:
    """``--score``: ``flows.sample_scores.guidance_sweep`` -> JSON record, plot, table."""
    from flows.sample_scores import guidance_sweep

    if model.num_classes is None:
        raise ConfigError("--score needs a label-conditioned run")
    weights = [float(w) for w in _GUIDANCES.value or [_GUIDANCE.value]]
    for w in weights:
        model.check_guidance(w)
    test = cli.split_of_run(config, "test")
    key = jax.random.key(_SEED.value)
    sampler = _sampler(
        model, _PER_CLASS.value, jax.random.fold_in(key, 0), _T.value,
        jnp.zeros((_PER_CLASS.value,), jnp.int32), weights[0],
    )  # fmt: skip

    def progress(row):
        print(
            f"w={row['guidance']:g}: test {row['test_guided_bits_per_dim']:.4f} bits/dim under "
            f"p_w; samples: accuracy {row['sample_accuracy']:.3f}, "
            f"{row['sample_bits_per_dim']:.4f} bits/dim under p, "
            f"{row['sample_guided_bits_per_dim']:.4f} under p_w, diversity "
            f"{row['diversity']:.4f} ({row['diversity_ratio']:.2f} of the test split's)",
            flush=True,
        )

    t0 = time.time()
    record = guidance_sweep(
        model,
        test,
        weights=weights,
        per_class=_PER_CLASS.value,
        sample_key=key,
        noise_key=jax.random.fold_in(jax.random.key(config.eval.seed), 1),  # evaluate's
        temperature=_T.value,
        sampler=sampler,
        batch_size=config.eval.batch_size,
        progress=progress,
    )
    record.update(
        _run_info(info),
        dataset=config.data.name,
        sampler=_sampler_record(sampler),
        seed=_SEED.value,
        score_s=time.time() - t0,
        provenance=provenance(),
    )
    png = _OUT.value or os.path.join(_WORKDIR.value, "guidance_sweep.png")
    path = os.path.splitext(png)[0] + ".json"
    wd.write_json(path, record)
    run_name = os.path.basename(os.path.normpath(_WORKDIR.value))
    plotting.plot_guidance_sweep(
        png,
        record["rows"],
        title=f"{run_name} (step {info['checkpoint_step']}): {record['per_class']} samples "
        f"per class at T={_T.value:g}",
    )
    print(f"{len(weights)} guidance weights scored -> {path}, {png}")


def main(argv):
    cli.no_extra_arguments(argv)
    cli.check_run_workdir(_WORKDIR.value)
    model, config, info = load_run(_WORKDIR.value)
    if _SCORE.value:
        return score(model, config, info)
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
    if model.image_shape[-1] not in (1, 3):
        raise ConfigError(
            f"the run's images have {model.image_shape[-1]} channels: sample draws grey (1) "
            f"or RGB (3) images; use --score, or model.sample in Python"
        )
    calls, sampler = [], None

    def draw(num, k, t, labels, **where):
        """One compiled sampling call; its sampler stats and seconds go into ``calls``."""
        nonlocal sampler
        if sampler is None:  # 'auto' is measured on the first call's batch
            sampler = _sampler(model, num, k, t, labels, _GUIDANCE.value)
        start = time.perf_counter()
        x, stats = sample_and_stats_compiled(
            model, num, k, t, labels, _GUIDANCE.value, _DENOISE.value, sampler
        )
        x = jax.block_until_ready(x)
        call = {**where, "temperature": float(t), "seconds": time.perf_counter() - start}
        calls.append(call | {name: np.asarray(v).tolist() for name, v in stats.items()})
        return x

    def header(t):  # a column group's: the temperature, and the guidance weight when guided
        return f"T={t:g}" + (f" w={_GUIDANCE.value:g}" if _GUIDANCE.value else "")

    tag = (f"_w{_GUIDANCE.value:g}" if _GUIDANCE.value else "") + (
        "_denoised" if _DENOISE.value else ""
    )
    if _SAMPLER.value != "sequential":
        tag += f"_{_SAMPLER.value}"
    if _CLASS_GRID.value:
        temps = [float(t) for t in _TEMPS.value]
        rows = []
        for y in range(model.num_classes):
            labels = jnp.full((_PER_CELL.value,), y)
            row = []
            for i, t in enumerate(temps):
                k = jax.random.fold_in(jax.random.fold_in(key, y), i)
                row.append(draw(_PER_CELL.value, k, t, labels, label=y))
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
        x = draw(_NUM.value, key, _T.value, context)
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
    provenance_text = f"{info['parameters']} params, step {info['checkpoint_step']}"
    run_name = os.path.basename(os.path.normpath(_WORKDIR.value))
    title = "; ".join(
        part
        for part in (
            f"samples of {run_name} ({provenance_text})",
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
    record = {
        "png": out,
        "num_images": int(len(images)),
        "description": desc,
        "guidance": _GUIDANCE.value,
        "denoise": _DENOISE.value,
        "seed": _SEED.value,
        **_run_info(info),
        "sampler": _sampler_record(sampler),
        "calls": calls,  # 'updates', 'converged': per block, in block order
        "provenance": provenance(),
    }
    wd.write_json(os.path.splitext(out)[0] + ".json", record)
    print(f"{len(images)} samples ({desc}; {provenance_text}) -> {out}")


if __name__ == "__main__":
    cli.run(main)
