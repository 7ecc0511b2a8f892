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
unconditional model, so the ranked column ``bits_per_dim`` is the density of ``p(x)`` for
every run: the marginal bits/dim of a conditional run, the bits/dim of an unconditional one.
The conditional bits/dim is shown beside it and never ranked.

Missing data. A workdir that does not exist, or is not a training workdir (no
``config.json``), is an error (``CompareError``, one line naming it). A workdir without the
evaluation record becomes a row marked "not evaluated" (not ranked) as long as at least one
other run has its record; when none has, that is an error.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import string

from flows import workdir as wd
from flows.errors import FlowsError
from flows.models.registry import describe_model

EVAL_FILE = wd.EVAL_TEST

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
    "bits_per_dim",
    "bits_per_dim_se",
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
class Run:
    """What one workdir holds. ``evaluation`` is None when the record is missing."""

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


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise CompareError(f"{path}: line {i} is not valid JSON") from None
    return records


def load_run(workdir: str, *, eval_file: str = EVAL_FILE, name: str | None = None) -> Run:
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
    return Run(
        name=name or os.path.basename(os.path.normpath(os.path.abspath(workdir))),
        workdir=workdir,
        config=wd.upgrade_config(_read_json(config_path)),
        data_info=wd.upgrade_record(_read_json(info_path)) if os.path.exists(info_path) else {},
        metrics=_read_jsonl(os.path.join(workdir, wd.METRICS)),
        evaluation=wd.upgrade_record(evaluation) if evaluation is not None else None,
        eval_file=eval_file,
        training_record=wd.upgrade_record(_read_json(test_path))
        if os.path.exists(test_path)
        else {},
        config_changed_at=wd.config_changed_at(workdir),
    )


def _unique_names(workdirs: list[str]) -> list[str]:
    """Workdir base names; the normalised paths where base names collide."""
    names = [os.path.basename(os.path.normpath(os.path.abspath(w))) for w in workdirs]
    return [
        n if names.count(n) == 1 else os.path.normpath(w)
        for n, w in zip(names, workdirs, strict=True)
    ]


def load_runs(workdirs: list[str], *, eval_file: str = EVAL_FILE) -> list[Run]:
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
        load_run(w, eval_file=eval_file, name=n)
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


def protocol(run: Run) -> dict:
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


def comparability_key(run: Run) -> tuple | None:
    """Equal keys <=> comparable bits/dim. None for a run without an evaluation record."""
    if run.evaluation is None:
        return None
    p = protocol(run)
    return tuple(p[f] for f, _ in COMPARABILITY_FIELDS)


def ranked_bits_per_dim(run: Run) -> tuple[float | None, float | None]:
    """(value, standard error) of the bits/dim of p(x): marginal for a conditional run."""
    ev = run.evaluation
    if ev is None:
        return None, None
    prefix = "marginal_" if run.conditional else ""
    value = ev.get(f"{prefix}bits_per_dim")
    if value is None or not math.isfinite(value):
        return None, None
    return float(value), ev.get(f"{prefix}bits_per_dim_se")


def model_summary(run: Run) -> str:
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
    runs: list[Run]


def _group_label(i: int) -> str:
    letters = string.ascii_uppercase
    return letters[i] if i < len(letters) else f"G{i + 1}"


def _last(records: list[dict], field: str):
    for r in reversed(records):
        if field in r:
            return r[field]
    return None


def _row(run: Run) -> dict:
    ev = run.evaluation or {}
    m = run.model_config
    p = protocol(run)
    provenance = {**run.training_record, **ev}
    value, se = ranked_bits_per_dim(run)
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
        bits_per_dim=value,
        bits_per_dim_se=se,
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


def compare(runs: list[Run]) -> Comparison:
    """Groups runs by ``comparability_key`` (in order of first appearance), ranks each group
    by the bits/dim of p(x) (lower is better) and writes the notes."""
    keys, groups, notes = {}, {}, []
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

    ordered = []
    for rows in rows_by_group.values():
        ranked = sorted((r for r in rows if r["bits_per_dim"] is not None), key=_sort_key)
        for i, r in enumerate(ranked, 1):
            r.update(rank=i, group_size=len(ranked), best=(i == 1 and len(ranked) > 1))
        for r in rows:
            if r["bits_per_dim"] is None:
                r["group_size"] = len(ranked)
        ordered += ranked + [r for r in rows if r["bits_per_dim"] is None]
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
    return (row["bits_per_dim"], row["run"])


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
        marginal = _pm(row["bits_per_dim"], row["bits_per_dim_se"])
        if row["conditional"] and row["bits_per_dim"] is not None:
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
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    out = [
        f"# Run comparison ({comparison.eval_file})",
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
