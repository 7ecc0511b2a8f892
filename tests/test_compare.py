"""experiments.compare / flows.reporting.compare on hand-written workdirs (no training)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

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
):
    """A fake training workdir: config.json, data_info.json, metrics.jsonl, eval record.

    ``legacy=True`` writes the names of workdirs made before the rename (the data's levels
    as ``num_levels``, the training length as ``train.num_steps``, no ``model.name``)."""
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
        if conditional:
            record.update(
                conditional=True,
                marginal_bits_per_dim=marginal_bpd,
                marginal_bits_per_dim_se=0.01,
                accuracy=0.9,
                accuracy_se=0.02,
                label_nll_nats=0.3,
                label_nll_nats_se=0.02,
                chance_accuracy=0.1,
            )
        with open(os.path.join(workdir, eval_file), "w") as f:
            json.dump(record, f)
    return workdir


def _rows(comparison):
    return {r["run"]: r for r in comparison.rows}


def test_table_lists_every_run_and_ranks_comparable_runs(tmp_path):
    dirs = [
        make_run(tmp_path, "worse", bpd=1.6),
        make_run(tmp_path, "better", bpd=1.4),
        make_run(tmp_path, "middle", bpd=1.5),
    ]
    comparison = compare.compare(compare.load_runs(dirs))
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
    rows = _rows(compare.compare(compare.load_runs(dirs)))
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
    comparison = compare.compare(compare.load_runs(dirs))
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
    comparison = compare.compare(compare.load_runs(dirs))
    rows = _rows(comparison)
    assert rows["cond"]["group"] == rows["uncond"]["group"]
    assert rows["uncond"]["rank"] == 1 and rows["cond"]["rank"] == 2
    assert rows["cond"]["bits_per_dim"] == 1.45
    assert rows["cond"]["conditional_bits_per_dim"] == 1.0
    assert rows["cond"]["accuracy"] == 0.9 and rows["uncond"]["accuracy"] is None
    table = compare.format_table(comparison)
    assert "MARGINAL bits/dim" in table and "1.4500 ± 0.0100 (marginal)" in table
    assert "0.900 ± 0.020 (0.10)" in table


def test_workdirs_from_before_the_rename_compare_with_new_ones(tmp_path):
    dirs = [make_run(tmp_path, "old", bpd=1.5, legacy=True), make_run(tmp_path, "new", bpd=1.4)]
    comparison = compare.compare(compare.load_runs(dirs))
    rows = _rows(comparison)
    assert rows["old"]["group"] == rows["new"]["group"] == "A"
    assert rows["old"]["num_bins"] == 17 and rows["old"]["model_name"] == "glow"
    assert rows["old"]["model"] == rows["new"]["model"] == "L=2 K=4 h=32 affine conv1x1_lu"
    assert (rows["new"]["rank"], rows["old"]["rank"]) == (1, 2)


def test_outputs_are_written(tmp_path):
    dirs = [make_run(tmp_path, "a", bpd=1.5), make_run(tmp_path, "b", bpd=1.3, num_bins=256)]
    comparison = compare.compare(compare.load_runs(dirs))
    paths = compare.write_outputs(comparison, str(tmp_path / "out"))
    assert set(paths) == {"csv", "markdown", "learning_curves"}
    with open(paths["csv"]) as f:
        records = list(csv.DictReader(f))
    assert [r["run"] for r in records] == ["a", "b"]
    assert records[0]["group"] != records[1]["group"]
    assert float(records[1]["bits_per_dim"]) == 1.3
    with open(paths["markdown"]) as f:
        markdown = f.read()
    assert markdown.count("\n| ") == 3 and "| a |" in markdown and "NOT COMPARABLE" in markdown
    with open(paths["learning_curves"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_missing_workdir_is_a_one_line_error(tmp_path):
    good = make_run(tmp_path, "good")
    with pytest.raises(compare.CompareError, match="nope: no such workdir") as info:
        compare.load_runs([good, str(tmp_path / "nope")])
    assert "\n" not in str(info.value)


def test_unevaluated_run_is_a_row_unless_no_run_is_evaluated(tmp_path):
    good = make_run(tmp_path, "good")
    pending = make_run(tmp_path, "pending", evaluated=False)
    comparison = compare.compare(compare.load_runs([pending, good]))
    rows = _rows(comparison)
    assert rows["pending"]["rank"] is None and rows["pending"]["group"] is None
    assert [r["run"] for r in comparison.rows] == ["good", "pending"]
    assert "pending: not evaluated (no eval_test.json)" in compare.format_table(comparison)
    with pytest.raises(compare.CompareError, match="no run has eval_test.json"):
        compare.load_runs([pending])


def test_other_eval_record_and_name_collisions(tmp_path):
    a = make_run(tmp_path / "x", "run", eval_file="eval_test_k4.json", importance_samples=4)
    b = make_run(tmp_path / "y", "run", eval_file="eval_test_k4.json", importance_samples=4)
    comparison = compare.compare(compare.load_runs([a, b], eval_file="eval_test_k4.json"))
    assert {r["run"] for r in comparison.rows} == {os.path.normpath(a), os.path.normpath(b)}
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
