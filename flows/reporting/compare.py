"""Comparing training runs from their workdirs alone: a table, CSV, Markdown, learning curves.

A run is read from the files its workdir holds (``flows.workdir``): ``config.json``,
``data_info.json`` (optional), ``metrics.jsonl`` (optional) and an evaluation record,
``eval_test.json`` by default or ``eval_<split>_k<k>.json`` from ``experiments.evaluate``.

Comparability. Two bits/dim are compared only when they were measured the same way: same
dataset and split, same number of evaluation examples, same levels per value (``num_bins``,
which ``n_bits`` sets), same image shape (padding changes D) and same number of importance
samples (k = 1 is the plain variational bound; a larger k gives a tighter, lower bound for the
same model). The dequantization is part of the model, not of the measurement: uniform and
variational noise (``flows.bijectors.dequantizer``) both bound the same discrete likelihood
``-log2 P(v) / D``, so they are ranked together (Flow++'s ablation compares them so) and the
model column says which. Runs are grouped by these fields (``COMPARABILITY_FIELDS``);
ranks, and the mark of the best run, are given within a group only, and the notes name what
differs between groups. Nothing is ranked across groups.

Conditional runs. A label-conditioned model reports ``-log p(x|y)`` (conditional bits/dim:
it is told the label, so it is lower) and the marginal ``-log p(x)``, with
``log p(x) = logsumexp_y [log p(x|y) + log p(y)]``. Only the marginal is comparable with an
unconditional model, so the ranked column ``marginal_bits_per_dim`` is the density of ``p(x)``
for every run: the record's ``marginal_bits_per_dim`` for a conditional run, its
``bits_per_dim`` for an unconditional one (whose density is its marginal). The column
``conditional_bits_per_dim`` (the record's ``bits_per_dim`` of a conditional run) is shown
beside it and never ranked. No output of compare has a bare ``bits_per_dim``: in a record that
name is the conditional value of a conditional run and the marginal of any other.

Paired differences and the best run. Within a group, each run is compared with the group's
rank-1 run: ``paired_diff_marginal_bits_per_dim`` is the mean over the test examples of this
run's bits/dim of p(x) minus the rank-1 run's, ± the standard error of those per-example
differences. It needs the per-example file beside each record (``eval_test.npz`` beside
``eval_test.json``: ``flows.evaluation.evaluate_per_example``) and the same measurement: same
split, example indices, noise key (the evaluation seed) and k. The group already has the same
split, number of examples and k; the files must agree on the indices and the key. Both
runs' uniform noise is then the same draw, and what the example makes hard cancels out, so the
SE is far smaller than either run's own. A variational dequantizer maps the same draw through
its own q(u|v), so its noise differs from the other run's: such a pair is still paired by
example (the per-example differences are independent across examples, so their SE stays an
honest one; it includes the part of the noise that differs), only less tight; a note says so.
The rank-1 run is marked best only when the difference to every other run of the group
exceeds ``SIGNIFICANCE_SE`` (2) standard errors: the paired SE where the pair has its files,
else the unpaired ``sqrt(SE_a^2 + SE_b^2)`` of the two records' means (an older workdir
without the file; larger than the paired SE when, as usual, the two models find the same
examples hard). A group whose rank-1 run is within 2 SE of another has no best.

Missing data. A workdir that does not exist, or is not a training workdir (no
``config.json``), is an error (``CompareError``, one line naming it). A workdir without the
evaluation record becomes a row marked "not evaluated" (not ranked) as long as at least one
other run has its record; when none has, that is an error. A missing, unreadable or stale
per-example file (one that does not average to its record) only loses the paired column.

Names. A run is named by its workdir's base name, or, where base names collide, by the
fewest trailing path components that tell it apart: never by an absolute path, so the
Markdown (``format_markdown``) of the same workdirs is the same text wherever they lie.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import string
import zipfile

import numpy as np

from flows import workdir as wd
from flows.errors import FlowsError
from flows.evaluation import read_per_example
from flows.likelihood import mean_and_standard_error
from flows.models.registry import describe_model

EVAL_FILE = wd.EVAL_TEST
# The rank-1 run of a group is marked best only when |difference| > SIGNIFICANCE_SE * SE
# against every other run of the group.
SIGNIFICANCE_SE = 2.0

# (field of the evaluation record, what it means): runs are comparable iff all are equal.
COMPARABILITY_FIELDS = (
    ("dataset", "dataset"),
    ("split", "split"),
    ("num_examples", "number of evaluation examples"),
    ("num_bins", "levels per value (num_bins, n_bits)"),
    ("image_shape", "image shape"),
    ("importance_samples", "importance samples (k)"),
)

CSV_COLUMNS = (
    "run",
    "workdir",
    "evaluated",
    "group",
    "rank",
    "group_size",
    "best",
    "dataset",
    "split",
    "num_examples",
    "n_bits",
    "num_bins",
    "image_shape",
    "dequantization",
    "importance_samples",
    "parameters",
    "checkpoint_step",
    "model_name",
    "model",
    "model_config",
    "conditional",
    "num_params",
    "train_steps",
    "wall_time_s",
    "marginal_bits_per_dim",
    "marginal_bits_per_dim_se",
    "paired_diff_marginal_bits_per_dim",
    "paired_diff_marginal_bits_per_dim_se",
    "significance_test",
    "significant",
    "conditional_bits_per_dim",
    "conditional_bits_per_dim_se",
    "accuracy",
    "accuracy_se",
    "chance_accuracy",
    "label_nll_nats",
    "config_changed_at",
    "note",
)


class CompareError(FlowsError, ValueError):
    """The runs cannot be compared as asked; the message is one line naming the workdir."""


@dataclasses.dataclass
class RunSummary:
    """What one workdir holds, as compare reads it (not ``flows.train``'s training run).
    ``evaluation`` is None when the record is missing; ``per_example`` holds the arrays of
    the per-example file beside the record, None (``per_example_note`` says why) when it is
    missing, unreadable or does not match the record."""

    name: str
    workdir: str
    config: dict
    data_info: dict
    metrics: list[dict]
    evaluation: dict | None
    eval_file: str
    training_record: dict  # eval_test.json (provenance: num_params, train_steps, wall time)
    # Config changes accepted on resume (flows.workdir.config_changed_at): [{step, keys}].
    config_changed_at: list[dict] = dataclasses.field(default_factory=list)
    per_example: dict | None = None
    per_example_note: str = ""

    @property
    def model_config(self) -> dict:
        return self.config.get("model", {})

    @property
    def conditional(self) -> bool:
        if self.evaluation is not None and "conditional" in self.evaluation:
            return bool(self.evaluation["conditional"])
        return bool(self.model_config.get("conditional", False))


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CompareError(f"{path}: not valid JSON ({e})") from None


def read_run_summary(
    workdir: str, *, eval_file: str = EVAL_FILE, name: str | None = None
) -> RunSummary:
    """Reads one workdir. Raises ``CompareError`` if it is missing or has no config.json."""
    if os.path.basename(eval_file) != eval_file or not eval_file:
        raise CompareError(f"--eval must be a file name inside the workdirs, got {eval_file!r}")
    if not os.path.isdir(workdir):
        raise CompareError(f"{workdir}: no such workdir")
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise CompareError(f"{workdir} is not a training workdir (no config.json)")
    info_path = os.path.join(workdir, "data_info.json")
    eval_path = os.path.join(workdir, eval_file)
    test_path = os.path.join(workdir, EVAL_FILE)
    evaluation = _read_json(eval_path) if os.path.exists(eval_path) else None
    run = RunSummary(
        name=name or _unique_names([workdir])[0],
        workdir=workdir,
        config=wd.upgrade_config(_read_json(config_path)),
        data_info=wd.upgrade_record(_read_json(info_path)) if os.path.exists(info_path) else {},
        metrics=wd.read_metrics(workdir),
        evaluation=wd.upgrade_record(evaluation) if evaluation is not None else None,
        eval_file=eval_file,
        training_record=wd.upgrade_record(_read_json(test_path))
        if os.path.exists(test_path)
        else {},
        config_changed_at=wd.config_changed_at(workdir),
    )
    if run.evaluation is not None:
        run.per_example, run.per_example_note = _read_per_example(run)
    return run


def _read_per_example(run: RunSummary) -> tuple[dict | None, str]:
    """``(arrays, "")`` of the per-example file beside the run's record, or ``(None, why
    not)``: missing, unreadable, or not the values the record averages (a stale file)."""
    name = wd.per_example_file(run.eval_file)
    file = os.path.join(run.workdir, name)
    if not os.path.exists(file):
        return None, f"no {name}"
    try:
        values = read_per_example(file)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None, f"{name} is unreadable"
    bpd, index = values.get("marginal_bits_per_dim"), values.get("index")
    mean, _ = marginal_bits_per_dim(run)
    if (
        bpd is None
        or index is None
        or "noise_key" not in values
        or bpd.ndim != 1
        or index.shape != bpd.shape
        or len(bpd) != run.evaluation.get("num_examples")
        or mean is None
        or not math.isclose(float(np.mean(bpd)), mean, rel_tol=1e-9, abs_tol=1e-12)
    ):
        return None, f"{name} does not match {run.eval_file}"
    return values, ""


def _unique_names(workdirs: list[str]) -> list[str]:
    """Workdir base names; where base names collide, the fewest trailing path components
    that tell the workdirs apart (``x/run``, ``y/run``)."""
    parts = [os.path.normpath(os.path.abspath(w)).split(os.sep) for w in workdirs]
    names = []
    for p in parts:
        n = 1
        while n < len(p) and sum(q[-n:] == p[-n:] for q in parts) > 1:
            n += 1
        names.append("/".join(p[-n:]))
    return names


def read_run_summaries(workdirs: list[str], *, eval_file: str = EVAL_FILE) -> list[RunSummary]:
    """Reads every workdir. Errors (one line): none given, a workdir given twice, a missing
    workdir, or no run with the evaluation record."""
    if not workdirs:
        raise CompareError("give one or more training workdirs to compare")
    seen = set()
    for w in workdirs:
        key = os.path.realpath(w)
        if key in seen:
            raise CompareError(f"{w}: workdir given twice")
        seen.add(key)
    runs = [
        read_run_summary(w, eval_file=eval_file, name=n)
        for w, n in zip(workdirs, _unique_names(workdirs), strict=True)
    ]
    if all(r.evaluation is None for r in runs):
        missing = ", ".join(r.workdir for r in runs)
        raise CompareError(
            f"no run has {eval_file} ({missing}); run python -m experiments.evaluate "
            f"--workdir=<workdir> or pick another record with --eval"
        )
    return runs


# -- what a run measured and how ---------------------------------------------------------


def protocol(run: RunSummary) -> dict:
    """The comparability fields of a run's evaluation (config / data_info as fallback)."""
    ev = run.evaluation or {}
    data = run.config.get("data", {})
    shape = ev.get("image_shape", run.data_info.get("image_shape"))
    return {
        "dataset": ev.get("dataset", data.get("name")),
        "split": ev.get("split"),
        "num_examples": ev.get("num_examples"),
        "num_bins": ev.get("num_bins", run.data_info.get("num_bins")),
        "image_shape": tuple(shape) if shape is not None else None,
        "importance_samples": ev.get("importance_samples"),
    }


def comparability_key(run: RunSummary) -> tuple | None:
    """Equal keys <=> comparable bits/dim. None for a run without an evaluation record."""
    if run.evaluation is None:
        return None
    p = protocol(run)
    return tuple(p[f] for f, _ in COMPARABILITY_FIELDS)


def marginal_bits_per_dim(run: RunSummary) -> tuple[float | None, float | None]:
    """(value, standard error) of the bits/dim of p(x), the ranked number: the record's
    ``marginal_bits_per_dim`` for a conditional run, its ``bits_per_dim`` otherwise."""
    ev = run.evaluation
    if ev is None:
        return None, None
    prefix = "marginal_" if run.conditional else ""
    value = ev.get(f"{prefix}bits_per_dim")
    if value is None or not math.isfinite(value):
        return None, None
    return float(value), ev.get(f"{prefix}bits_per_dim_se")


def model_summary(run: RunSummary) -> str:
    """The family's own short description of the run's model (``flows.models.registry``)."""
    return describe_model({**run.model_config, "conditional": run.conditional})


def _shape_text(shape) -> str:
    return "x".join(str(s) for s in shape) if shape else "?"


def _protocol_text(p: dict) -> str:
    return (
        f"{p['split'] or p['dataset']}, {p['num_examples']} examples, {p['num_bins']} levels, "
        f"{_shape_text(p['image_shape'])}, "
        f"k={p['importance_samples']}"
    )


def _difference_text(a: dict, b: dict) -> str:
    """What differs between two protocols, e.g. ``importance samples (k) 8 vs 1``."""
    diffs = []
    for field, meaning in COMPARABILITY_FIELDS:
        if a[field] != b[field]:
            va, vb = a[field], b[field]
            if field == "image_shape":
                va, vb = _shape_text(va), _shape_text(vb)
            diffs.append(f"{meaning} {va} vs {vb}")
    return "; ".join(diffs)


# -- the comparison ----------------------------------------------------------------------


@dataclasses.dataclass
class Comparison:
    rows: list[dict]  # one per run (CSV_COLUMNS), grouped, best first within a group
    groups: dict[str, dict]  # label -> protocol of the group
    notes: list[str]
    eval_file: str
    runs: list[RunSummary]


def _group_label(i: int) -> str:
    letters = string.ascii_uppercase
    return letters[i] if i < len(letters) else f"G{i + 1}"


def _last(records: list[dict], field: str):
    for r in reversed(records):
        if field in r:
            return r[field]
    return None


def _row(run: RunSummary) -> dict:
    ev = run.evaluation or {}
    m = run.model_config
    p = protocol(run)
    provenance = {**run.training_record, **ev}
    value, se = marginal_bits_per_dim(run)
    row = dict.fromkeys(CSV_COLUMNS)
    row.update(
        run=run.name,
        workdir=run.workdir,
        evaluated=run.evaluation is not None,
        dataset=p["dataset"],
        split=p["split"],
        num_examples=p["num_examples"],
        n_bits=ev.get("n_bits", run.config.get("data", {}).get("n_bits")),
        num_bins=p["num_bins"],
        image_shape=_shape_text(p["image_shape"]),
        dequantization=ev.get("dequantization"),
        importance_samples=p["importance_samples"],
        parameters=ev.get("parameters"),
        checkpoint_step=ev.get("checkpoint_step", ev.get("step")),
        model_name=m.get("name"),
        model=model_summary(run),
        model_config=json.dumps(m, sort_keys=True),
        conditional=run.conditional,
        num_params=provenance.get("num_params"),
        train_steps=provenance.get("train_steps", _last(run.metrics, "step")),
        wall_time_s=provenance.get("wall_time_s", _last(run.metrics, "wall_time_s")),
        marginal_bits_per_dim=value,
        marginal_bits_per_dim_se=se,
        note="",
    )
    if run.conditional and run.evaluation is not None:
        row.update(
            conditional_bits_per_dim=ev.get("bits_per_dim"),
            conditional_bits_per_dim_se=ev.get("bits_per_dim_se"),
            accuracy=ev.get("accuracy"),
            accuracy_se=ev.get("accuracy_se"),
            chance_accuracy=ev.get("chance_accuracy"),
            label_nll_nats=ev.get("label_nll_nats"),
        )
    if run.evaluation is None:
        row["note"] = f"not evaluated (no {run.eval_file}); not ranked"
    elif value is None:
        what = "marginal bits/dim" if run.conditional else "bits/dim"
        row["note"] = f"no finite {what} in {run.eval_file}; not ranked"
    if run.config_changed_at:
        changed = "; ".join(
            f"step {c['step']}: {', '.join(c['keys'])}" for c in run.config_changed_at
        )
        row["config_changed_at"] = changed
        row["note"] = "; ".join(filter(None, [row["note"], f"config changed mid-run ({changed})"]))
    return row


def paired_difference(run: RunSummary, reference: RunSummary) -> tuple[float, float] | str:
    """``(mean, SE)`` over the test examples of ``run``'s bits/dim of p(x) minus
    ``reference``'s, from their per-example files, or why the two cannot be paired. The two
    are of one group (same split, number of examples and k); their files must hold the same
    example indices and noise key."""
    for r in (run, reference):
        if r.per_example is None:
            return f"{r.name}: {r.per_example_note}"
    a, b = run.per_example, reference.per_example
    if not np.array_equal(a["index"], b["index"]):
        return "other test examples"
    if not np.array_equal(a["noise_key"], b["noise_key"]):
        return "other dequantization noise: another evaluation seed"
    return mean_and_standard_error(a["marginal_bits_per_dim"] - b["marginal_bits_per_dim"])


def _test_against_rank_1(row: dict, first: dict, run: RunSummary, reference: RunSummary):
    """Fills ``row``'s difference to its group's rank-1 row ``first`` and whether it is
    significant: paired where the two runs' per-example files allow it, else unpaired."""
    paired = paired_difference(run, reference)
    if isinstance(paired, tuple):
        diff, se = paired
        row.update(
            paired_diff_marginal_bits_per_dim=diff,
            paired_diff_marginal_bits_per_dim_se=se,
            significance_test="paired",
        )
    else:
        diff = row["marginal_bits_per_dim"] - first["marginal_bits_per_dim"]
        ses = (row["marginal_bits_per_dim_se"], first["marginal_bits_per_dim_se"])
        se = math.hypot(*ses) if None not in ses else math.nan
        row["significance_test"] = "unpaired"
        unpaired = f"not paired with {reference.name} ({paired}); unpaired test"
        row["note"] = "; ".join(filter(None, [row["note"], unpaired]))
    row["significant"] = bool(math.isfinite(se) and abs(diff) > SIGNIFICANCE_SE * se)


def compare(runs: list[RunSummary]) -> Comparison:
    """Groups runs by ``comparability_key`` (in order of first appearance), ranks each group
    by the bits/dim of p(x) (lower is better), tests every run against its group's rank-1
    run (the best mark) and writes the notes."""
    keys, groups, notes = {}, {}, []
    by_name = {run.name: run for run in runs}
    rows_by_group: dict[str, list[dict]] = {}
    unranked = []
    for run in runs:
        row = _row(run)
        key = comparability_key(run)
        if key is None:
            unranked.append(row)
            continue
        if key not in keys:
            keys[key] = _group_label(len(keys))
            groups[keys[key]] = protocol(run)
        row["group"] = keys[key]
        rows_by_group.setdefault(keys[key], []).append(row)

    ordered, no_best, not_common = [], [], []
    for label, rows in rows_by_group.items():
        ranked = sorted((r for r in rows if r["marginal_bits_per_dim"] is not None), key=_sort_key)
        for i, r in enumerate(ranked, 1):
            r.update(rank=i, group_size=len(ranked), best=False)
        for r in rows:
            if r["marginal_bits_per_dim"] is None:
                r["group_size"] = len(ranked)
        ordered += ranked + [r for r in rows if r["marginal_bits_per_dim"] is None]
        if len(ranked) < 2:
            continue
        first = ranked[0]
        for r in ranked[1:]:
            _test_against_rank_1(r, first, by_name[r["run"]], by_name[first["run"]])
            if r["significance_test"] == "paired" and "variational" in (
                r["dequantization"],
                first["dequantization"],
            ):
                not_common.append(r["run"])
        first["best"] = all(r["significant"] for r in ranked[1:])
        if not first["best"]:
            close = ", ".join(r["run"] for r in ranked[1:] if not r["significant"])
            no_best.append(
                f"group {label}: no run marked best: {first['run']} is not lower than {close} "
                f"by more than {SIGNIFICANCE_SE:g} SE of the difference."
            )
    ordered += unranked

    labels = list(groups)
    if len(labels) > 1:
        notes.append(
            f"NOT COMPARABLE: the runs fall into {len(labels)} groups that measured bits/dim "
            f"differently; ranks and the best mark are within a group only."
        )
        first = groups[labels[0]]
        for label in labels[1:]:
            notes.append(
                f"group {label} differs from group {labels[0]} in: "
                f"{_difference_text(groups[label], first)}."
            )
    elif labels:
        notes.append("All evaluated runs are comparable (one group).")
    if labels:
        notes.append("rank: within its group, by bits/dim of p(x), lower is better.")
    if any(r["significance_test"] for r in ordered):
        per_example = wd.per_example_file(runs[0].eval_file)
        notes.append(
            f"best: the rank-1 run of a group, marked only when every other run of the group "
            f"is worse by more than {SIGNIFICANCE_SE:g} standard errors of the difference "
            f"(|diff| > {SIGNIFICANCE_SE:g} SE): the paired SE where both runs have {per_example} "
            f"with the same examples and noise, else the unpaired sqrt(SE_a^2 + SE_b^2) of the "
            f"two means."
        )
        notes.append(
            f"Δ p(x) vs rank 1 (paired): mean ± SE over the test examples of the run's bits/dim "
            f"of p(x) minus the rank-1 run's, on the same examples with the same dequantization "
            f"noise (same split, example indices, noise key and k; from {per_example}); '-' "
            f"where not paired (see the run's note)."
        )
    notes += no_best
    if not_common:
        notes.append(
            f"Paired with a variational-dequantization run ({', '.join(not_common)}): the same "
            f"examples and noise draw, but each model maps the draw through its own q(u|v), so "
            f"the noise is not common; the SE of the per-example differences includes that "
            f"part (valid, less tight)."
        )
    for label in labels:
        notes.append(f"group {label}: {_protocol_text(groups[label])}.")
    if any(r["conditional"] and r["evaluated"] for r in ordered):
        notes.append(
            "Conditional runs are ranked by their MARGINAL bits/dim, -log2 p(x) with "
            "p(x) = sum_y p(x|y) p(y), the number comparable with unconditional models; their "
            "conditional bits/dim, -log2 p(x|y), is shown but never ranked."
        )
    if any(run.conditional and run.metrics for run in runs):
        notes.append("Learning curves of conditional runs are of -log2 p(x|y) (the training loss).")
    for r in ordered:
        if r["note"]:
            notes.append(f"{r['run']}: {r['note']}.")
    if len({r["parameters"] for r in ordered if r["evaluated"]}) > 1:
        notes.append("Runs were evaluated with different parameters (EMA vs raw); see 'eval'.")
    eval_file = runs[0].eval_file if runs else EVAL_FILE
    return Comparison(rows=ordered, groups=groups, notes=notes, eval_file=eval_file, runs=runs)


def _sort_key(row: dict):
    return (row["marginal_bits_per_dim"], row["run"])


# -- formatting ----------------------------------------------------------------------------

TABLE_HEADER = (
    "group",
    "rank",
    "run",
    "data (split)",
    "model",
    "params",
    "steps",
    "wall time",
    "bits/dim p(x)",
    "Δ p(x) vs rank 1 (paired)",
    "bits/dim p(x|y)",
    "accuracy (chance)",
    "eval",
)


def _pm(value, se, digits=4) -> str:
    if value is None:
        return "-"
    if se is None or not math.isfinite(se):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _count(n) -> str:
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e4:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _paired_text(row: dict) -> str:
    diff, se = row["paired_diff_marginal_bits_per_dim"], row["paired_diff_marginal_bits_per_dim_se"]
    if diff is not None:
        # One digit more than the bits/dim: a paired SE is often far below a run's own.
        return f"{diff:+.5f} ± {se:.5f}" if math.isfinite(se) else f"{diff:+.5f}"
    if row["rank"] == 1 and row["group_size"] > 1:
        return "ref"
    return "-"


def _rank_text(row: dict) -> str:
    if row["rank"] is None:
        return "-"
    text = f"{row['rank']}/{row['group_size']}"
    return text + " best" if row["best"] else text


def table_cells(row: dict) -> list[str]:
    """One row of the human-readable table (text and Markdown)."""
    if row["evaluated"]:
        data = row["split"] if row["split"] and ":" in row["split"] else row["dataset"]
        accuracy = "-"
        if row["accuracy"] is not None:
            accuracy = _pm(row["accuracy"], row["accuracy_se"], 3)
            if row["chance_accuracy"] is not None:
                accuracy += f" ({row['chance_accuracy']:.2f})"
        marginal = _pm(row["marginal_bits_per_dim"], row["marginal_bits_per_dim_se"])
        if row["conditional"] and row["marginal_bits_per_dim"] is not None:
            marginal += " (marginal)"
        evaluation = f"n={row['num_examples']} k={row['importance_samples']}"
        if row["parameters"]:
            evaluation += f" {row['parameters']}"
        if row["checkpoint_step"] is not None:
            evaluation += f"@{row['checkpoint_step']}"
    else:
        data, accuracy, marginal, evaluation = row["dataset"] or "-", "-", "not evaluated", "-"
    return [
        row["group"] or "-",
        _rank_text(row),
        row["run"],
        str(data),
        row["model"],
        _count(row["num_params"]),
        "-" if row["train_steps"] is None else str(row["train_steps"]),
        _duration(row["wall_time_s"]),
        marginal,
        _paired_text(row),
        _pm(row["conditional_bits_per_dim"], row["conditional_bits_per_dim_se"]),
        accuracy,
        evaluation,
    ]


def format_table(comparison: Comparison) -> str:
    """Aligned plain-text table, then the notes."""
    lines = [[*TABLE_HEADER]] + [table_cells(r) for r in comparison.rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(TABLE_HEADER))]
    out = [f"{len(comparison.rows)} runs, evaluation record {comparison.eval_file}", ""]
    for i, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append("")
    out += [f"* {n}" for n in comparison.notes]
    return "\n".join(out) + "\n"


def format_markdown(comparison: Comparison) -> str:
    """A Markdown table, then the notes, for pasting into generated docs: the same workdirs
    give the same text (run names, never absolute paths; numbers with fixed digits; no
    time of day), with no heading of its own."""

    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    out = [
        f"Runs compared by `python -m experiments.compare` on `{comparison.eval_file}`.",
        "",
        "| " + " | ".join(esc(c) for c in TABLE_HEADER) + " |",
        "|" + "|".join("---" for _ in TABLE_HEADER) + "|",
    ]
    for r in comparison.rows:
        out.append("| " + " | ".join(esc(c) for c in table_cells(r)) + " |")
    out.append("")
    out += [f"- {esc(n)}" for n in comparison.notes]
    return "\n".join(out) + "\n"


def format_csv(comparison: Comparison) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in comparison.rows:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()


def plot(comparison: Comparison, path: str) -> bool:
    """Overlaid train/validation curves of every run with metrics; False if none has any."""
    from flows import plotting

    by_name = {r["run"]: r for r in comparison.rows}
    curves = {}
    for run in comparison.runs:
        if not run.metrics:
            continue
        row = by_name[run.name]
        label = f"{run.name} [{row['group'] or 'not evaluated'}]"
        if run.conditional:
            label += " p(x|y)"
        curves[label] = run.metrics
    if not curves:
        return False
    title = "train / validation bits/dim"
    if len(comparison.groups) > 1:
        title += f" ({len(comparison.groups)} groups: not comparable across groups)"
    plotting.plot_learning_curves(path, curves, title=title)
    return True


def write_outputs(comparison: Comparison, out_dir: str) -> dict[str, str]:
    """Writes comparison.csv, comparison.md and learning_curves.png; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "csv": os.path.join(out_dir, "comparison.csv"),
        "markdown": os.path.join(out_dir, "comparison.md"),
    }
    with open(paths["csv"], "w", newline="") as f:
        f.write(format_csv(comparison))
    with open(paths["markdown"], "w") as f:
        f.write(format_markdown(comparison))
    curves = os.path.join(out_dir, "learning_curves.png")
    if plot(comparison, curves):
        paths["learning_curves"] = curves
    return paths
