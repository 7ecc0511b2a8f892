"""experiments.compare / flows.reporting.compare on hand-written workdirs (no training)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from flows import workdir as wd
from flows.errors import FlowsError
from flows.evaluation import write_per_example
from flows.reporting import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(
    root,
    name,
    *,
    bpd=1.5,
    num_bins=17,
    image_shape=(8, 8, 1),
    importance_samples=1,
    conditional=False,
    marginal_bpd=None,
    evaluated=True,
    dataset="digits",
    eval_file="eval_test.json",
    legacy=False,
    dequantization="uniform",
    per_example=None,
    noise_key=(0, 1),
):
    """A fake training workdir: config.json, data_info.json, metrics.jsonl, eval record.

    ``legacy=True`` writes the names of workdirs made before the rename (the data's levels
    as ``num_levels``, the training length as ``train.num_steps``, no ``model.name``).
    ``per_example`` (bits/dim of p(x) per test example) also writes the per-example file
    beside the record, with ``noise_key``; the record's bits/dim of p(x) is then their mean
    and standard error over the examples, and its number of examples theirs."""
    workdir = os.path.join(str(root), name)
    os.makedirs(workdir)
    model = {
        "name": "glow",
        "num_levels": 2,
        "num_steps": 4,
        "hidden_channels": 32,
        "coupling": "affine",
        "permutation": "conv1x1_lu",
        "logit_alpha": None,
        "conditional": conditional,
        "condition_on": "top",
        "weight_y": 0.01 if conditional else 0.0,
        "dequantization": dequantization,
    }
    config = {"data": {"name": dataset, "n_bits": None}, "model": model, "train": {}}
    levels_key = "num_levels" if legacy else "num_bins"
    if legacy:
        del model["name"]
        config["train"]["num_steps"] = 30
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config, f)
    info = {
        "image_shape": list(image_shape),
        levels_key: num_bins,
        "num_classes": 10,
        "train": f"{dataset}:train",
        "num_train": 1000,
    }
    with open(os.path.join(workdir, "data_info.json"), "w") as f:
        json.dump(info, f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for step in (10, 20, 30):
            record = {"step": step, "train_bpd": bpd + 1.0 / step, "wall_time_s": step * 0.5}
            if step % 20 == 0:
                record["val_bpd"] = bpd + 0.5 / step
            f.write(json.dumps(record) + "\n")
    if evaluated:
        record = {
            "bits_per_dim": bpd,
            "bits_per_dim_se": 0.01,
            "split": f"{dataset}:test",
            "num_examples": 300,
            levels_key: num_bins,
            "image_shape": list(image_shape),
            "dequantization": dequantization,
            "importance_samples": importance_samples,
            "dataset": dataset,
            "n_bits": None,
            "parameters": "ema",
            "checkpoint_step": 30,
            "selected_by": "best validation bits/dim",
            "num_params": 123456,
            "train_steps": 30,
            "wall_time_s": 15.0,
            "total_time_s": 20.0,
        }
        values = None
        if per_example is not None:
            marginal = np.asarray(per_example, np.float64)
            values = {
                "index": np.arange(len(marginal)),
                "noise_key": np.asarray(noise_key, np.uint32),
                "marginal_bits_per_dim": marginal,
            }
            mean, se = float(marginal.mean()), float(marginal.std(ddof=1) / len(marginal) ** 0.5)
            record["num_examples"] = len(marginal)
            if conditional:
                marginal_bpd = mean
                values["conditional_bits_per_dim"] = marginal - 0.5
                record.update(bits_per_dim=mean - 0.5, bits_per_dim_se=se)
            else:
                record.update(bits_per_dim=mean, bits_per_dim_se=se)
        if conditional:
            record.update(
                conditional=True,
                marginal_bits_per_dim=marginal_bpd,
                marginal_bits_per_dim_se=0.01 if per_example is None else se,
                accuracy=0.9,
                accuracy_se=0.02,
                label_nll_nats=0.3,
                label_nll_nats_se=0.02,
                chance_accuracy=0.1,
            )
        with open(os.path.join(workdir, eval_file), "w") as f:
            json.dump(record, f)
        if values is not None:
            write_per_example(os.path.join(workdir, wd.per_example_file(eval_file)), values)
    return workdir


def _rows(comparison):
    return {r["run"]: r for r in comparison.rows}


def test_table_lists_every_run_and_ranks_comparable_runs(tmp_path):
    dirs = [
        make_run(tmp_path, "worse", bpd=1.6),
        make_run(tmp_path, "better", bpd=1.4),
        make_run(tmp_path, "middle", bpd=1.5),
    ]
    comparison = compare.compare(compare.read_run_summaries(dirs))
    table = compare.format_table(comparison)
    for name in ("worse", "better", "middle"):
        assert name in table
    rows = _rows(comparison)
    assert {rows[n]["group"] for n in rows} == {"A"}
    assert [rows[n]["rank"] for n in ("better", "middle", "worse")] == [1, 2, 3]
    assert rows["better"]["best"] and not rows["worse"]["best"]
    assert "1/3 best" in table
    assert "All evaluated runs are comparable" in table


def test_uniform_and_variational_dequantization_are_ranked_together(tmp_path):
    """Both bound the same discrete likelihood: one group, the model column says which."""
    dirs = [
        make_run(tmp_path, "uniform", bpd=1.5),
        make_run(tmp_path, "variational", bpd=1.4, dequantization="variational"),
    ]
    rows = _rows(compare.compare(compare.read_run_summaries(dirs)))
    assert rows["uniform"]["group"] == rows["variational"]["group"]
    assert (rows["variational"]["rank"], rows["uniform"]["rank"]) == (1, 2)
    assert rows["variational"]["dequantization"] == "variational"
    assert rows["variational"]["model"].endswith(", variational dequantization")
    assert "dequantization" not in rows["uniform"]["model"]


@pytest.mark.parametrize(
    "different, what",
    [
        ({"num_bins": 256}, "levels per value"),
        ({"importance_samples": 8}, "importance samples"),
        ({"image_shape": (16, 16, 1)}, "image shape"),
        ({"dataset": "mnist"}, "dataset"),
    ],
)
def test_incomparable_runs_are_flagged_and_not_ranked_together(tmp_path, different, what):
    dirs = [
        make_run(tmp_path, "a", bpd=1.5),
        make_run(tmp_path, "b", bpd=1.2, **different),  # lower, but measured differently
        make_run(tmp_path, "c", bpd=1.4),
    ]
    comparison = compare.compare(compare.read_run_summaries(dirs))
    rows = _rows(comparison)
    assert rows["a"]["group"] == rows["c"]["group"] == "A" and rows["b"]["group"] == "B"
    assert (rows["c"]["rank"], rows["a"]["rank"]) == (1, 2) and rows["c"]["best"]
    assert rows["b"]["rank"] == 1 and rows["b"]["group_size"] == 1 and not rows["b"]["best"]
    table = compare.format_table(comparison)
    assert "NOT COMPARABLE" in table
    assert f"group B differs from group A in: {what}" in table


def test_conditional_runs_are_ranked_by_marginal_bits_per_dim(tmp_path):
    dirs = [
        # conditional bpd 1.0 would win, but its marginal (1.45) is what compares with p(x)
        make_run(tmp_path, "cond", bpd=1.0, conditional=True, marginal_bpd=1.45),
        make_run(tmp_path, "uncond", bpd=1.40),
    ]
    comparison = compare.compare(compare.read_run_summaries(dirs))
    rows = _rows(comparison)
    assert rows["cond"]["group"] == rows["uncond"]["group"]
    assert rows["uncond"]["rank"] == 1 and rows["cond"]["rank"] == 2
    assert rows["cond"]["marginal_bits_per_dim"] == 1.45
    assert rows["cond"]["conditional_bits_per_dim"] == 1.0
    assert rows["cond"]["accuracy"] == 0.9 and rows["uncond"]["accuracy"] is None
    table = compare.format_table(comparison)
    assert "MARGINAL bits/dim" in table and "1.4500 ± 0.0100 (marginal)" in table
    assert "0.900 ± 0.020 (0.10)" in table


def test_workdirs_from_before_the_rename_compare_with_new_ones(tmp_path):
    dirs = [make_run(tmp_path, "old", bpd=1.5, legacy=True), make_run(tmp_path, "new", bpd=1.4)]
    comparison = compare.compare(compare.read_run_summaries(dirs))
    rows = _rows(comparison)
    assert rows["old"]["group"] == rows["new"]["group"] == "A"
    assert rows["old"]["num_bins"] == 17 and rows["old"]["model_name"] == "glow"
    assert rows["old"]["model"] == rows["new"]["model"] == "L=2 K=4 h=32 affine conv1x1_lu"
    assert (rows["new"]["rank"], rows["old"]["rank"]) == (1, 2)


def test_outputs_are_written(tmp_path):
    dirs = [make_run(tmp_path, "a", bpd=1.5), make_run(tmp_path, "b", bpd=1.3, num_bins=256)]
    comparison = compare.compare(compare.read_run_summaries(dirs))
    paths = compare.write_outputs(comparison, str(tmp_path / "out"))
    assert set(paths) == {"csv", "markdown", "learning_curves"}
    with open(paths["csv"]) as f:
        records = list(csv.DictReader(f))
    assert [r["run"] for r in records] == ["a", "b"]
    assert records[0]["group"] != records[1]["group"]
    assert float(records[1]["marginal_bits_per_dim"]) == 1.3
    with open(paths["markdown"]) as f:
        markdown = f.read()
    assert markdown.count("\n| ") == 3 and "| a |" in markdown and "NOT COMPARABLE" in markdown
    with open(paths["learning_curves"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_missing_workdir_is_a_one_line_error(tmp_path):
    good = make_run(tmp_path, "good")
    with pytest.raises(compare.CompareError, match="nope: no such workdir") as info:
        compare.read_run_summaries([good, str(tmp_path / "nope")])
    assert "\n" not in str(info.value)


def test_unevaluated_run_is_a_row_unless_no_run_is_evaluated(tmp_path):
    good = make_run(tmp_path, "good")
    pending = make_run(tmp_path, "pending", evaluated=False)
    comparison = compare.compare(compare.read_run_summaries([pending, good]))
    rows = _rows(comparison)
    assert rows["pending"]["rank"] is None and rows["pending"]["group"] is None
    assert [r["run"] for r in comparison.rows] == ["good", "pending"]
    assert "pending: not evaluated (no eval_test.json)" in compare.format_table(comparison)
    with pytest.raises(compare.CompareError, match="no run has eval_test.json"):
        compare.read_run_summaries([pending])


def test_other_eval_record_and_name_collisions(tmp_path):
    a = make_run(tmp_path / "x", "run", eval_file="eval_test_k4.json", importance_samples=4)
    b = make_run(tmp_path / "y", "run", eval_file="eval_test_k4.json", importance_samples=4)
    comparison = compare.compare(compare.read_run_summaries([a, b], eval_file="eval_test_k4.json"))
    assert {r["run"] for r in comparison.rows} == {"x/run", "y/run"}  # never absolute
    assert all(r["importance_samples"] == 4 for r in comparison.rows)


def _cli(*args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "experiments.compare", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_cli_on_two_workdirs(tmp_path):
    a = make_run(tmp_path, "run_a", bpd=1.5)
    b = make_run(tmp_path, "run_b", bpd=1.2, conditional=True, marginal_bpd=1.45)
    result = _cli(a, b, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "run_a" in result.stdout and "run_b" in result.stdout
    for name in ("comparison.csv", "comparison.md", "learning_curves.png"):
        assert os.path.exists(tmp_path / "compare_out" / name), name
    missing = _cli(a, str(tmp_path / "missing"), f"--out={tmp_path / 'o'}", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "missing: no such workdir" in missing.stderr


# -- paired differences and the best mark ------------------------------------------------

# Bits/dim of p(x) of the reference run on five test examples, and another run's excess on
# each: between-example spread (SE 0.05) far larger than the spread of the excess.
REFERENCE = np.array([1.0, 1.1, 0.9, 1.2, 1.0])
EXCESS = np.array([0.05, 0.07, 0.03, 0.06, 0.04])


def test_paired_difference_and_its_se_are_the_hand_computation(tmp_path):
    dirs = [
        make_run(tmp_path, "worse", per_example=REFERENCE + EXCESS),
        make_run(tmp_path, "better", per_example=REFERENCE),
    ]
    comparison = compare.compare(compare.read_run_summaries(dirs))
    rows = _rows(comparison)
    worse = rows["worse"]
    # mean 0.05; deviations 0, 0.02, -0.02, 0.01, -0.01: SE = sqrt(0.001 / 4) / sqrt(5)
    assert worse["paired_diff_marginal_bits_per_dim"] == pytest.approx(0.05)
    assert worse["paired_diff_marginal_bits_per_dim_se"] == pytest.approx(
        math.sqrt(0.001 / 4) / math.sqrt(5)
    )
    assert (worse["significance_test"], worse["significant"]) == ("paired", True)
    assert rows["better"]["best"] and rows["better"]["rank"] == 1
    assert rows["better"]["paired_diff_marginal_bits_per_dim"] is None
    table = compare.format_table(comparison)
    assert "+0.05000 ± 0.00707" in table and "1/2 best" in table
    assert "|diff| > 2 SE" in table


def test_conditional_run_is_paired_on_its_marginal(tmp_path):
    dirs = [
        make_run(tmp_path, "cond", conditional=True, per_example=REFERENCE + EXCESS),
        make_run(tmp_path, "uncond", per_example=REFERENCE),
    ]
    row = _rows(compare.compare(compare.read_run_summaries(dirs)))["cond"]
    assert row["paired_diff_marginal_bits_per_dim"] == pytest.approx(0.05)
    assert row["conditional_bits_per_dim"] == pytest.approx(np.mean(REFERENCE + EXCESS) - 0.5)


def test_a_variational_run_is_paired_by_example_with_a_note(tmp_path):
    dirs = [
        make_run(tmp_path, "vardeq", per_example=REFERENCE + EXCESS, dequantization="variational"),
        make_run(tmp_path, "uniform", per_example=REFERENCE),
    ]
    comparison = compare.compare(compare.read_run_summaries(dirs))
    assert _rows(comparison)["vardeq"]["significance_test"] == "paired"
    assert any(
        n.startswith("Paired with a variational-dequantization run (vardeq)")
        for n in comparison.notes
    )
    uniform = [
        make_run(tmp_path / "u", n, per_example=REFERENCE + d) for n, d in (("a", 0), ("b", EXCESS))
    ]
    notes = compare.compare(compare.read_run_summaries(uniform)).notes
    assert not any("variational" in n for n in notes)


def test_best_is_not_marked_when_a_difference_is_within_two_se(tmp_path):
    noisy = np.array([0.05, -0.04, 0.03, -0.02, 0.01])  # mean 0.006, SE 0.016
    dirs = [
        make_run(tmp_path, "clearly_worse", per_example=REFERENCE + EXCESS),
        make_run(tmp_path, "close", per_example=REFERENCE + noisy),
        make_run(tmp_path, "first", per_example=REFERENCE),
    ]
    comparison = compare.compare(compare.read_run_summaries(dirs))
    rows = _rows(comparison)
    assert [rows[n]["rank"] for n in ("first", "close", "clearly_worse")] == [1, 2, 3]
    assert rows["close"]["paired_diff_marginal_bits_per_dim"] == pytest.approx(0.006)
    assert not rows["close"]["significant"] and rows["clearly_worse"]["significant"]
    assert not any(r["best"] for r in comparison.rows)
    table = compare.format_table(comparison)
    assert " best" not in table.split("* ")[0] and "1/3" in table  # no rank cell says best
    assert "group A: no run marked best: first is not lower than close by more than 2 SE" in (table)


def test_old_workdir_without_the_file_is_compared_unpaired(tmp_path):
    """The same values as the paired test, one run without its per-example file: the
    unpaired SE, sqrt(SE_a^2 + SE_b^2) of the two means, is too large to call a best."""
    dirs = [
        make_run(tmp_path, "worse", per_example=REFERENCE + EXCESS),
        make_run(tmp_path, "old", per_example=REFERENCE),
    ]
    os.remove(os.path.join(dirs[1], "eval_test.npz"))
    comparison = compare.compare(compare.read_run_summaries(dirs))
    rows = _rows(comparison)
    worse, old = rows["worse"], rows["old"]
    assert (old["rank"], worse["rank"]) == (1, 2)
    assert worse["paired_diff_marginal_bits_per_dim"] is None
    assert (worse["significance_test"], worse["significant"]) == ("unpaired", False)
    assert not old["best"]
    assert "not paired with old (old: no eval_test.npz); unpaired test" in worse["note"]
    # A clear difference is still marked without the file (records' SE 0.01 each).
    dirs = [make_run(tmp_path / "b", "a", bpd=1.6), make_run(tmp_path / "b", "b", bpd=1.4)]
    rows = _rows(compare.compare(compare.read_run_summaries(dirs)))
    assert rows["b"]["best"] and rows["a"]["significance_test"] == "unpaired"


@pytest.mark.parametrize("damage", ["other_seed", "stale", "unreadable"])
def test_runs_whose_files_do_not_pair_are_tested_unpaired(tmp_path, damage):
    other = make_run(tmp_path, "other", per_example=REFERENCE + EXCESS)
    first = make_run(
        tmp_path,
        "first",
        per_example=REFERENCE,
        noise_key=(0, 2) if damage == "other_seed" else (0, 1),
    )
    npz = os.path.join(other, "eval_test.npz")
    if damage == "stale":  # a later evaluation rewrote the record, not the file
        write_per_example(
            npz,
            {
                "index": np.arange(5),
                "noise_key": np.array([0, 1], np.uint32),
                "marginal_bits_per_dim": REFERENCE + 1,
            },
        )
    elif damage == "unreadable":
        with open(npz, "wb") as f:
            f.write(b"not an npz")
    row = _rows(compare.compare(compare.read_run_summaries([other, first])))["other"]
    assert row["significance_test"] == "unpaired"
    assert row["paired_diff_marginal_bits_per_dim"] is None
    why = {
        "other_seed": "another evaluation seed",
        "stale": "other: eval_test.npz does not match eval_test.json",
        "unreadable": "other: eval_test.npz is unreadable",
    }[damage]
    assert why in row["note"]


def test_csv_columns_name_what_they_hold(tmp_path):
    dirs = [
        make_run(tmp_path, "cond", bpd=1.0, conditional=True, marginal_bpd=1.45),
        make_run(tmp_path, "uncond", bpd=1.40),
    ]
    text = compare.format_csv(compare.compare(compare.read_run_summaries(dirs)))
    reader = csv.DictReader(text.splitlines())
    assert "bits_per_dim" not in reader.fieldnames  # the record's name means two things
    for column in (
        "marginal_bits_per_dim",
        "marginal_bits_per_dim_se",
        "paired_diff_marginal_bits_per_dim",
        "paired_diff_marginal_bits_per_dim_se",
        "significance_test",
        "significant",
        "conditional_bits_per_dim",
    ):
        assert column in reader.fieldnames
    rows = {r["run"]: r for r in reader}
    assert float(rows["cond"]["marginal_bits_per_dim"]) == 1.45  # record: marginal_bits_per_dim
    assert float(rows["cond"]["conditional_bits_per_dim"]) == 1.0  # record: bits_per_dim
    assert float(rows["uncond"]["marginal_bits_per_dim"]) == 1.4  # record: bits_per_dim
    assert rows["uncond"]["conditional_bits_per_dim"] == ""


@pytest.mark.slow
def test_markdown_is_the_same_text_wherever_the_workdirs_are(tmp_path, monkeypatch):
    def workdirs(root):
        dirs = [
            make_run(root / "x", "run", per_example=REFERENCE + EXCESS),
            make_run(root / "y", "run", per_example=REFERENCE),
            make_run(root / "x", "old", per_example=REFERENCE + 0.6),
        ]
        os.remove(os.path.join(dirs[2], "eval_test.npz"))  # from before the file
        return dirs

    absolute = workdirs(tmp_path / "one")
    workdirs(tmp_path / "two")
    monkeypatch.chdir(tmp_path)
    relative = [os.path.join("two", d, n) for d, n in (("x", "run"), ("y", "run"), ("x", "old"))]
    markdowns = [
        compare.format_markdown(compare.compare(compare.read_run_summaries(dirs)))
        for dirs in (absolute, relative)
    ]
    assert markdowns[0] == markdowns[1]
    markdown = markdowns[0]
    assert str(tmp_path) not in markdown and not markdown.startswith("#")
    assert "| Δ p(x) vs rank 1 (paired) |" in markdown
    assert "| A | 1/3 best | y/run |" in markdown and "| +0.05000 ± 0.00707 |" in markdown
    assert "old: not paired with y/run (old: no eval_test.npz)" in markdown

    result = _cli(*relative, "--markdown", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == markdown
    assert not os.path.exists(tmp_path / "compare_out")  # only stdout, without --out


def test_metrics_are_read_with_the_trainers_policy(tmp_path):
    workdir = make_run(tmp_path, "killed")
    with open(os.path.join(workdir, wd.METRICS), "a") as f:
        f.write('{"step": 40, "train_')  # a run killed mid-write
    run = compare.read_run_summary(workdir)
    assert run.metrics == wd.read_metrics(workdir)
    assert [r["step"] for r in run.metrics] == [10, 20, 30]
    with open(os.path.join(workdir, wd.METRICS), "a") as f:
        f.write('\n{"step": 50}\n')  # the cut-off line is now followed by others
    with pytest.raises(FlowsError, match=r"metrics.jsonl: line 4 is not valid JSON"):
        compare.read_run_summary(workdir)
    wd.write_jsonl(os.path.join(workdir, wd.METRICS), run.metrics)
    with open(os.path.join(workdir, wd.CONFIG_HISTORY), "w") as f:
        f.write('{"step": 20, "chan')  # written whole, never appended to: damage, not a kill
    with pytest.raises(FlowsError, match=r"config_history.jsonl: line 1 is not valid JSON"):
        compare.read_run_summary(workdir)
