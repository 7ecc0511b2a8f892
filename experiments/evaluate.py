"""Evaluate a trained run on a full split: bits/dim with standard error and provenance.

    python -m experiments.evaluate --workdir=runs/digits [--split=test] [--num_samples=8] \\
        [--params=ema|raw] [--checkpoint=best|latest] [--dataset=NAME[:SPLIT]]

For label-conditioned runs it reports conditional and marginal bits/dim, and the Bayes-rule
classifier's accuracy and NLL of p(y|x). ``--guidance=w`` evaluates the guided model instead,
the exact density ``p_w(x | y)`` of classifier-free guided samples (a conditional run of a
family with guidance, trained with label dropout; ``DensityModel.guided_log_prob``): every
number of the record is then of p_w, written to ``eval_<split>_k<k>_w<w>.json``. Writes
``<workdir>/eval_<split>_k<k>.json`` and,
beside it, the per-example values it averages (``.npz``; ``experiments.compare`` pairs on them).
Its printed line and its record name the checkpoint step (``checkpoint_step``). An earlier
record there of another step (a run evaluated while it trains, then again) is kept, with its
``.npz``, as ``eval_<split>_k<k>_step<its step>.json``.

``--dataset=NAME[:SPLIT]`` (SPLIT default ``test``; a TFDS version goes in NAME with a
split, ``name:1.0.0:test``) is out-of-distribution evaluation: the run's ``--split`` and
split SPLIT of dataset NAME (same image shape and levels, read with the run's data_dir,
n_bits and pad_to), both with the same parameters and noise, per-example bits/dim of p(x)
(the marginal for a conditional run) and the AUROC of bits/dim as the OOD score
(``flows.ood``). Writes ``eval_ood_<name>_<split>.json`` and ``ood_<name>_<split>.png`` (the
two histograms). Offline OOD sets for the digits: ``photo_patches``, ``digits_inverted``.
"""

import os
import re
import time

import jax
from absl import flags
from tqdm import tqdm

from experiments import cli
from flows import data as data_lib
from flows import ood
from flows import workdir as wd
from flows.errors import ConfigError
from flows.evaluation import evaluate_per_example, summary_line, write_per_example
from flows.plotting import plot_ood_histogram
from flows.provenance import provenance
from flows.train.restore import load_run

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "validation", "train"], "Which split.")
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", 1, "Importance samples of the noise (k).", lower_bound=1
)
_PARAMS = flags.DEFINE_enum("params", "auto", ["auto", "ema", "raw"], "Parameters to use.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Eval batch size (0: the config's).", lower_bound=0)
_SEED = flags.DEFINE_integer(
    "seed", None, "Seed of the dequantization noise (default: the training run's test noise)."
)
_DATASET = flags.DEFINE_string(
    "dataset",
    None,
    "NAME[:SPLIT] (SPLIT default test): out-of-distribution evaluation against this dataset "
    "(same image shape and levels), e.g. photo_patches or digits_inverted for the digits.",
)
_GUIDANCE = flags.DEFINE_float(
    "guidance", 0.0, "Evaluate the guided model p_w(x|y) of this guidance weight (0: p(x|y))."
)
flags.mark_flags_as_required(["workdir"])
cli.finite_at_least(_GUIDANCE, 0)
flags.register_multi_flags_validator(
    ["guidance", "dataset"],
    lambda f: not f["guidance"] or f["dataset"] is None,
    message="--guidance and --dataset do not go together (out-of-distribution scores use "
    "the unguided model)",
)

_VERSION = re.compile(r"\d+(\.\d+)*")


def parse_dataset(value: str) -> tuple[str, str]:
    """``'NAME[:SPLIT]'`` -> ``(name, split)``; split ``'test'`` when absent. The split is
    after the last ``:`` unless that part is a version (``mnist:3.0.1`` is a name)."""
    name, sep, split = value.strip().rpartition(":")
    if not sep or _VERSION.fullmatch(split):
        name, split = value.strip(), "test"
    if not name or not split:
        raise ConfigError(f"--dataset must be NAME or NAME:SPLIT, got {value!r}")
    return name, split


def _file_part(text: str) -> str:
    """``text`` with every run of characters other than letters, digits, ``.``, ``-`` and
    ``_`` replaced by ``_`` (a dataset or split name as part of a file name)."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "_"


def _key(config):
    if _SEED.value is not None:
        return jax.random.key(_SEED.value)
    return jax.random.fold_in(jax.random.key(config.eval.seed), 1)


def _load(workdir: str):
    """``(model, config, info)`` of the checkpoint and parameters the flags choose."""
    return load_run(workdir, checkpoint=_CHECKPOINT.value, use_ema=cli.use_ema(_PARAMS.value))


def _add_provenance(record: dict, info: dict, config, t0: float) -> None:
    """The checkpoint's provenance (``load_run``'s info), the dataset and the time taken."""
    record.update(
        info,
        dataset=config.data.name,
        n_bits=config.data.n_bits,
        eval_s=time.time() - t0,
        provenance=provenance(),
    )


def _keep_earlier_step(step: int, path: str, *companions: str) -> str:
    """Before a record of checkpoint step ``step`` is written to ``path``: a record there of
    another step is kept, renamed ``<name>_step<its step>.json`` (its ``companions``, e.g.
    its histogram, likewise); returns a note naming the kept file, or ''. A record of the
    same step is replaced."""
    try:
        earlier = wd.read_json(path).get("checkpoint_step")
    except (OSError, ValueError, AttributeError):  # none there, or not a record
        return ""
    if earlier is None or earlier == step:
        return ""
    kept = []
    for file in (path, *companions):
        stem, ext = os.path.splitext(file)
        if os.path.exists(file):
            os.replace(file, f"{stem}_step{earlier}{ext}")
            kept.append(os.path.basename(f"{stem}_step{earlier}{ext}"))
    return f" (the step-{earlier} evaluation is kept as {', '.join(kept)})"


def run_split(workdir: str) -> None:
    model, config, info = _load(workdir)
    guidance = _GUIDANCE.value
    model.check_guidance(guidance)
    data = cli.split_of_run(config, _SPLIT.value)
    t0 = time.time()
    with tqdm(total=data.num_examples, desc=f"eval {data.name}", unit="img") as bar:
        record, per_example = evaluate_per_example(
            model,
            data,
            batch_size=_BATCH.value or config.eval.batch_size,
            key=_key(config),
            num_samples=_NUM_SAMPLES.value,
            progress=bar.update,
            guidance=guidance,
        )
    _add_provenance(record, info, config, t0)
    tag = f"_w{guidance:g}" if guidance else ""
    path = os.path.join(workdir, f"eval_{_SPLIT.value}_k{_NUM_SAMPLES.value}{tag}.json")
    kept = _keep_earlier_step(info["checkpoint_step"], path, wd.per_example_file(path))
    wd.write_json(path, record)
    write_per_example(wd.per_example_file(path), per_example)
    print(f"{summary_line(record)}; checkpoint {info['checkpoint']} -> {path}{kept}")


def run_ood(workdir: str, dataset: str) -> None:
    """The run's split and ``dataset``'s, same parameters and noise: record, histogram."""
    name, split = parse_dataset(dataset)
    config, data_info = wd.load_config(workdir), wd.load_data_info(workdir)
    dc = {**data_lib.DATA_CONFIG_DEFAULTS, **config.data.to_dict()}
    pad_to = tuple(dc["pad_to"]) if dc["pad_to"] is not None else None
    ood_data = data_lib.open_split(  # first: a wrong dataset fails before the model loads
        name,
        split,
        data_dir=dc["data_dir"],
        n_bits=dc["n_bits"],
        pad_to=pad_to,
        download=dc["download"],
        cache_bytes=0,  # read once, batch by batch
    )
    trained_on = f"{config.data.name}, {wd.path(workdir, wd.DATA_INFO)}"
    ood.check_same_data(ood_data, data_info["image_shape"], data_info["num_bins"], trained_on)
    model, config, info = _load(workdir)
    in_data = cli.split_of_run(config, _SPLIT.value)
    t0 = time.time()
    total = in_data.num_examples + ood_data.num_examples
    with tqdm(total=total, desc=f"eval {in_data.name}, {ood_data.name}", unit="img") as bar:
        record, in_bpd, ood_bpd = ood.evaluate_ood(
            model,
            in_data,
            ood_data,
            batch_size=_BATCH.value or config.eval.batch_size,
            key=_key(config),
            num_samples=_NUM_SAMPLES.value,
            progress=bar.update,
        )
    _add_provenance(record, info, config, t0)
    stem = f"{_file_part(name)}_{_file_part(split)}"
    path = os.path.join(workdir, f"eval_ood_{stem}.json")
    png = os.path.join(workdir, f"ood_{stem}.png")
    kept = _keep_earlier_step(info["checkpoint_step"], path, png)
    wd.write_json(path, record)
    what = "marginal bits/dim" if record["conditional"] else "bits/dim"
    plot_ood_histogram(
        png,
        in_bpd,
        ood_bpd,
        in_label=f"in-distribution {in_data.name}",
        ood_label=f"OOD {ood_data.name}",
        auroc=record["auroc"],
        title=f"{os.path.basename(os.path.normpath(workdir))}: step {info['checkpoint_step']}, "
        f"{info['parameters']} params",
        xlabel=f"{what} per example (-log2 p(x) / D; {record['dequantization']} dequantization, "
        f"k={_NUM_SAMPLES.value})",
    )
    print(f"{ood.ood_summary_line(record)}; checkpoint {info['checkpoint']} -> {path}, {png}{kept}")


def main(argv):
    cli.no_extra_arguments(argv)
    cli.check_run_workdir(_WORKDIR.value)
    if _DATASET.value is None:
        run_split(_WORKDIR.value)
    else:
        run_ood(_WORKDIR.value, _DATASET.value)


if __name__ == "__main__":
    cli.run(main)
