"""The tables of README.md and docs/ regenerated from the committed records.

    python scripts/docs.py collect runs/digits [runs/...]   # a run's records -> results/runs/
    python scripts/docs.py                                  # rewrite the generated tables
    python scripts/docs.py --check                          # exit 1 if a table is stale

A generated table sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` in
a Markdown file; everything outside those markers is written by hand. Each table is a
function of the records alone: training runs' records under ``results/runs/<run>/``
(``eval_test.json`` with its per-example file, ``experiments.evaluate``'s, ``latents``, OOD
and guidance-sweep records, ``config.json`` and ``metrics.jsonl``, copied from the workdir by
``collect``)
and benchmark records under ``results/bench/``. Every record carries its own provenance
(``flows.provenance``), which each table prints under it, so no commit or machine is typed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import table as bench_table  # noqa: E402
from bench.table import markdown  # noqa: E402
from flows.models.registry import describe_model  # noqa: E402
from flows.reporting.compare import paired_difference, read_run_summary  # noqa: E402

RUNS = os.path.join(ROOT, "results", "runs")
BENCH = os.path.join(ROOT, "results", "bench")
MODELS = os.path.join(ROOT, "models")
PAGES = (
    "README.md",
    "docs/results.md",
    "docs/speed.md",
    "docs/trust.md",
    "docs/models.md",
)
BEGIN = re.compile(r"<!-- generated: (\w+) -->\n")
END = "<!-- end generated -->"
# What ``collect`` copies from a workdir (a few kB each; a class grid tens of kB).
RECORD_FILES = (
    "config.json",
    "metrics.jsonl",
    "eval_*.json",
    "eval_*.npz",
    "latents/latents_*.json",
    "class_grid_*.png",
    "guidance_sweep.json",
    "guidance_sweep.png",
)


# -- reading records -------------------------------------------------------------------------
def read(run: str, name: str) -> dict | None:
    path = os.path.join(RUNS, run, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def metrics(run: str) -> list[dict]:
    path = os.path.join(RUNS, run, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def provenance_line(paths: list[str]) -> str:
    """One line naming, per distinct provenance, the code and the machine of the records."""
    seen: dict[str, list[str]] = {}
    for path in paths:
        with open(path) as f:
            p = json.load(f).get("provenance")
        if p is None:
            key = "provenance not recorded (the record predates it)"
        else:
            commit = (p.get("commit") or "no git checkout")[:10] + (
                " (uncommitted changes)" if p.get("dirty") else ""
            )
            cpu = p.get("cpu", {})
            key = (
                f"code {commit}, {cpu.get('model', '?')} ({cpu.get('cores', '?')} cores; "
                f"{' '.join(cpu.get('flags', [])) or 'no listed flags'}), "
                f"jax {p.get('versions', {}).get('jax', '?')}, {p.get('date', '?')[:10]}"
            )
        seen.setdefault(key, []).append(os.path.relpath(path, ROOT))
    parts = [f"{key}: {', '.join(f'`{n}`' for n in names)}" for key, names in seen.items()]
    return "Records: " + "; ".join(parts) + "."


def pm(record: dict, field: str = "bits_per_dim", digits: int = 3) -> str:
    return f"{record[field]:.{digits}f} ± {record[field + '_se']:.{digits}f}"


def command_of(record: dict) -> str:
    """The training command of a record, without the workdir and the progress-bar flag."""
    command = (record.get("provenance") or {}).get("command", "")
    words = [
        w
        for w in command.split()
        if not w.startswith(("--workdir", "--config.train.progress"))
        and w not in ("python", "-m", "experiments.train")
    ]
    return "`" + " ".join(w.removeprefix("--config=") for w in words) + "`"


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(round(seconds % 60))} s"


def thousands(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{round(n / 1e3)}k"


def link(run: str, name: str = "eval_test.json") -> str:
    return f"[{name}](results/runs/{run}/{name})"


# -- the tables ------------------------------------------------------------------------------
def runs_table(runs: list[str], *, prefix: str = "") -> tuple[str, list[str]]:
    """Family runs: the command, test bits/dim (marginal for conditional runs), the
    conditional figures, parameters, best step, wall time, record."""
    head = ["family", "config", "test bits/dim", "-log2 p(x\\|y), Bayes accuracy", "params"]
    head += ["best step", "train wall time", "record"]
    rows, paths = [], []
    for run in runs:
        r = read(run, "eval_test.json")
        if r is None:
            continue
        paths.append(os.path.join(RUNS, run, "eval_test.json"))
        family = read(run, "config.json")["model"]["name"]
        if r.get("conditional"):
            bpd = f"marginal **{pm(r, 'marginal_bits_per_dim')}**"
            cond = f"{pm(r)}, {pm(r, 'accuracy')}"
        else:
            bpd, cond = f"**{pm(r)}**", ""
        rows.append(
            [
                family + (", p(x\\|y)" if r.get("conditional") else ""),
                command_of(r),
                bpd,
                cond,
                thousands(r["num_params"]),
                str(r["checkpoint_step"]),
                minutes(r["wall_time_s"]),
                f"[record]({prefix}results/runs/{run}/eval_test.json)",
            ]
        )
    return markdown(head, rows), paths


def headline() -> tuple[str, list[str]]:
    runs = ["digits", "digits_cond", "tarflow_digits", "tarflow_digits_cond"]
    return runs_table([*runs, "jet_digits", "jet_digits_cond"])


def transformers() -> tuple[str, list[str]]:
    runs = ["digits", "tarflow_digits", "tarflow_digits_cond", "jet_digits", "jet_digits_cond"]
    return runs_table([*runs, "tarflow_digits_gen"], prefix="../")


def couplings() -> tuple[str, list[str]]:
    runs = {"additive": "digits_additive", "affine": "digits"}
    runs.update({"affine, 176 hidden": "digits_affine176", "spline": "digits_spline"})
    pairing = "eval_test_k1.json"  # experiments.evaluate's record of the same checkpoint
    if read("digits", pairing) is None:
        return "", []
    base = read_run_summary(os.path.join(RUNS, "digits"), eval_file=pairing)
    paths = [os.path.join(RUNS, "digits", pairing)]
    head = ["coupling", "config", "test bits/dim", "paired vs affine", "best step", "params"]
    rows = []
    for name, run in runs.items():
        r = read(run, "eval_test.json")
        if r is None:
            continue
        paths.append(os.path.join(RUNS, run, "eval_test.json"))
        paired = ""
        if run != "digits":
            mine = read_run_summary(os.path.join(RUNS, run), eval_file=pairing)
            paths.append(os.path.join(RUNS, run, pairing))
            diff = paired_difference(mine, base)
            if isinstance(diff, str):
                paired = f"not paired: {diff}"
            else:
                d = (
                    mine.per_example["marginal_bits_per_dim"]
                    - base.per_example["marginal_bits_per_dim"]
                )
                paired = f"{diff[0]:+.3f} ± {diff[1]:.3f} (lower on {np.mean(d < 0):.0%})"
        rows.append(
            [
                name,
                command_of(r),
                pm(r),
                paired,
                str(r["checkpoint_step"]),
                f"{r['num_params']:,}",
            ]
        )
    return markdown(head, rows), paths


def dequantization() -> tuple[str, list[str]]:
    head = ["dequantization", "config", "ELBO, k = 1", "importance-weighted, k = 16", "params"]
    head.append("train wall time")
    rows, paths = [], []
    for name, run in (("uniform", "digits"), ("variational", "digits_vardeq")):
        r, k16 = read(run, "eval_test.json"), read(run, "eval_test_k16.json")
        if r is None:
            continue
        paths.append(os.path.join(RUNS, run, "eval_test.json"))
        if k16 is not None:
            paths.append(os.path.join(RUNS, run, "eval_test_k16.json"))
        rows.append(
            [
                name,
                command_of(r),
                pm(r),
                pm(k16) if k16 else "",
                f"{r['num_params']:,}",
                minutes(r["wall_time_s"]),
            ]
        )
    return markdown(head, rows), paths


def latents() -> tuple[str, list[str]]:
    head = ["run", "images", "max abs x - f^-1(f(x))", "in levels", "quantize back exactly"]
    rows, paths = [], []
    for run in ("digits", "digits_cond"):
        r = read(run, "latents/latents_test.json")
        if r is None:
            continue
        paths.append(os.path.join(RUNS, run, "latents/latents_test.json"))
        rows.append(
            [
                f"`runs/{run}`",
                str(r["num_examples"]),
                f"{r['reconstruction_max_abs_error']:.2e}",
                f"{r['reconstruction_max_abs_error_levels']:.1e}",
                f"{r['num_exact_reconstructions']}/{r['num_examples']}",
            ]
        )
    return markdown(head, rows), paths


def ood() -> tuple[str, list[str]]:
    head = ["run", "OOD set", "in-distribution bits/dim", "OOD bits/dim", "AUROC"]
    rows, paths = [], []
    for run in ("digits", "digits_cond"):
        for name in ("photo_patches", "digits_inverted"):
            path = os.path.join(RUNS, run, f"eval_ood_{name}_test.json")
            if not os.path.exists(path):
                continue
            paths.append(path)
            with open(path) as f:
                r = json.load(f)
            rows.append(
                [
                    f"`runs/{run}`",
                    r["ood_split"],
                    f"{r['in_bits_per_dim']:.4f} ± {r['in_bits_per_dim_se']:.4f}",
                    f"{r['ood_bits_per_dim']:.4f} ± {r['ood_bits_per_dim_se']:.4f}",
                    f"**{r['auroc']:.4f}**",
                ]
            )
    return markdown(head, rows), paths


def guidance() -> tuple[str, list[str]]:
    """``experiments.sample --score`` sweeps (``guidance_sweep.json``): per guidance weight,
    the test split's bits/dim under the guided model, and the samples' accuracy, bits/dim
    and diversity (``flows.sample_scores``)."""
    head = ["run", "w", "test bits/dim under p_w", "sample accuracy", "samples under p"]
    head += ["under p_w", "as drawn, under p_w", "diversity (test = 1)", "values outside [0, 1)"]
    rows, paths = [], []
    for path in sorted(glob.glob(os.path.join(RUNS, "*", "guidance_sweep.json"))):
        paths.append(path)
        with open(path) as f:
            r = json.load(f)
        run = os.path.basename(os.path.dirname(path))
        for row in r["rows"]:
            rows.append(
                [
                    f"`runs/{run}`",
                    f"{row['guidance']:g}",
                    f"**{pm(row, 'test_guided_bits_per_dim')}**",
                    pm(row, "sample_accuracy"),
                    pm(row, "sample_bits_per_dim"),
                    pm(row, "sample_guided_bits_per_dim"),
                    pm(row, "continuous_sample_guided_bits_per_dim"),
                    f"{row['diversity_ratio']:.2f}",
                    f"{100 * row['sample_out_of_range']:.1f}%",
                ]
            )
    return markdown(head, rows), paths


def kill_resume() -> tuple[str, list[str]]:
    """``scripts/kill_resume.py --record``: the kills and whether the run ended bitwise equal."""
    path = os.path.join(ROOT, "results", "kill_resume.json")
    if not os.path.exists(path):
        return "", []
    with open(path) as f:
        r = json.load(f)
    kinds: dict[str, int] = {}
    for kill in r["kills"]:
        kind = kill["kind"].split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    head = ["training steps", "kills (kind: count)", "final state", "test bits/dim", "wall time"]
    equal = f"**all {r['num_arrays']} arrays byte-equal**, same metrics records"
    row = [
        str(r["steps"]),
        ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())),
        equal if r["bitwise_equal"] else "DIFFERENT: " + "; ".join(r["problems"]),
        f"{r['test_bits_per_dim']:.6f} (both runs)" if r["bitwise_equal"] else "",
        minutes(r["wall_s"]),
    ]
    return markdown(head, [row]), [path]


def shipped_models() -> tuple[str, list[str]]:
    """The model cards of the exports under ``models/`` (``experiments.export``): the config,
    parameters and bytes on disk, the export's own test evaluation (``experiments.evaluate``
    on it) beside the test record of the run it came from, and its class grids."""
    head = ["model", "config", "params", "on disk", "test bits/dim", "run's record", "samples"]
    rows, paths = [], []
    for export in sorted(glob.glob(os.path.join(MODELS, "*", "exported_from.json"))):
        folder = os.path.dirname(export)
        own = os.path.join(folder, "eval_test_k1.json")
        if not os.path.exists(own):
            continue
        paths.append(own)
        with open(export) as f:
            origin = json.load(f)
        with open(own) as f:
            r = json.load(f)
        name = os.path.basename(folder)
        size = sum(
            os.path.getsize(os.path.join(d, file))
            for d, _, files in os.walk(os.path.join(folder, "checkpoints"))
            for file in files
        )
        field = "marginal_bits_per_dim" if r.get("conditional") else "bits_per_dim"
        run = origin.get("run_test_record") or {}
        ran = f"{run[field]:.3f} ({origin['run']}, step {origin['checkpoint_step']})" if run else ""
        grids = sorted(glob.glob(os.path.join(folder, "class_grid_*.png")))
        rows.append(
            [
                f"[`models/{name}`](../models/{name})",
                describe_model(origin["model"]),
                thousands(origin["num_parameters"]),
                f"{size / 2**20:.1f} MiB",
                ("marginal " if r.get("conditional") else "") + f"**{pm(r, field)}**",
                ran,
                " ".join(
                    f"[{os.path.basename(g)}](../models/{name}/{os.path.basename(g)})"
                    for g in grids
                ),
            ]
        )
    return markdown(head, rows), paths


TABLES = {
    "headline": headline,
    "models": shipped_models,
    "transformers": transformers,
    "couplings": couplings,
    "dequantization": dequantization,
    "latents": latents,
    "ood": ood,
    "guidance": guidance,
    "kill_resume": kill_resume,
    **bench_table.TABLES,
}


def render(name: str) -> str:
    text, paths = TABLES[name]()
    if not paths:
        return "No record yet.\n"
    return f"{text}\n\n{provenance_line(paths)}\n"


def regenerate(page_text: str) -> str:
    """The page with every generated block rewritten from the records."""
    out, pos = [], 0
    for m in BEGIN.finditer(page_text):
        end = page_text.index(END, m.end())
        out += [page_text[pos : m.end()], render(m.group(1))]
        pos = end
    return "".join(out) + page_text[pos:]


# -- commands --------------------------------------------------------------------------------
def collect(workdirs: list[str]) -> None:
    """Copies each workdir's record files into ``results/runs/<workdir's name>/``."""
    for workdir in workdirs:
        if not os.path.exists(os.path.join(workdir, "config.json")):
            sys.exit(f"error: {workdir} is not a training workdir (no config.json)")
        dest = os.path.join(RUNS, os.path.basename(os.path.normpath(workdir)))
        for pattern in RECORD_FILES:
            for src in glob.glob(os.path.join(workdir, pattern)):
                target = os.path.join(dest, os.path.relpath(src, workdir))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(src, target)
        print(f"{workdir} -> {os.path.relpath(dest, ROOT)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", nargs="?", choices=("tables", "collect"), default="tables")
    p.add_argument("workdirs", nargs="*", help="collect: the training workdirs")
    p.add_argument("--check", action="store_true", help="exit 1 if a generated table is stale")
    args = p.parse_args(argv)
    if args.command == "collect":
        collect(args.workdirs)
        return 0
    stale = []
    for page in PAGES:
        path = os.path.join(ROOT, page)
        with open(path) as f:
            text = f.read()
        new = regenerate(text)
        if new != text:
            stale.append(page)
            if not args.check:
                with open(path, "w") as f:
                    f.write(new)
    if args.check and stale:
        print(f"stale generated tables in {', '.join(stale)}: run python scripts/docs.py")
        return 1
    if not args.check:
        print(f"rewrote {', '.join(stale)}" if stale else "every generated table is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
