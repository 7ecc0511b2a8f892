"""The shipped models (``models/``, written by ``experiments.export``) load, evaluate to the
numbers of their model cards, and sample right after install; an export copies the
parameters bit for bit."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest

from tests.cli_checks import ROOT, assert_one_line_error, run_commands

SHIPPED = sorted(
    os.path.basename(os.path.dirname(p))
    for p in glob.glob(os.path.join(ROOT, "models", "*", "exported_from.json"))
)


def _record(folder: str) -> dict:
    with open(os.path.join(folder, "eval_test_k1.json")) as f:
        return json.load(f)


def test_every_shipped_model_has_its_card_records():
    """Each export under models/ carries its origin, its own test evaluation and a class
    grid (what docs/models.md is generated from), and its checkpoint stays small."""
    assert "glow_digits_cond" in SHIPPED
    total = 0
    for name in SHIPPED:
        folder = os.path.join(ROOT, "models", name)
        with open(os.path.join(folder, "exported_from.json")) as f:
            origin = json.load(f)
        assert origin["source"] == "flows" and origin["num_parameters"] > 0
        assert _record(folder)["split"] == "digits:test"
        assert glob.glob(os.path.join(folder, "class_grid_*.png"))
        for d, _, files in os.walk(os.path.join(folder, "checkpoints")):
            total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    assert total < 8 * 2**20, f"shipped checkpoints take {total / 2**20:.1f} MiB"


@pytest.mark.slow
def test_an_export_evaluates_bit_for_bit_like_its_source_and_bad_input_is_refused(tmp_path):
    """Exporting the shipped Glow again and evaluating both gives the same bits/dim to the
    last bit (same parameters, same split, same key; its card's within rounding); samples
    from it are drawn; a missing run and an existing --out are one-line errors that write
    nothing."""
    shipped = os.path.join(ROOT, "models", "glow_digits_cond")
    source = tmp_path / "source"
    shutil.copytree(shipped, source)  # evaluate writes into the workdir: not into the repo
    again = tmp_path / "again"
    export, evaluate = "experiments.export", "experiments.evaluate"
    results = run_commands(
        [
            [export, f"--workdir={source}", f"--out={again}"],
            [evaluate, f"--workdir={source}", "--batch_size=300"],
            [evaluate, f"--workdir={again}", "--batch_size=300"],
            ["experiments.sample", f"--workdir={again}", "--num=4", f"--out={tmp_path}/s.png"],
            [export, f"--workdir={tmp_path}/missing", f"--out={tmp_path}/x"],
            [export, f"--workdir={source}", f"--out={again}"],
        ]
    )
    for r in results[:4]:
        assert r.returncode == 0, r.stderr
    a, b = _record(str(source)), _record(str(again))
    assert a["bits_per_dim"] == b["bits_per_dim"]
    # The card's figure was made with XLA's default optimisation, the suite's without it.
    assert abs(b["bits_per_dim"] - _record(shipped)["bits_per_dim"]) < 1e-6
    assert a["marginal_bits_per_dim"] == b["marginal_bits_per_dim"]
    assert os.path.getsize(tmp_path / "s.png") > 0
    assert_one_line_error(results[4], "does not exist")
    assert_one_line_error(results[5], "not empty")
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_samples_a_class_grid(name, tmp_path):
    """``experiments.sample --workdir=models/NAME --class_grid`` works as README says (on a
    copy, so the test writes nothing into the checkout)."""
    copy = tmp_path / name
    shutil.copytree(os.path.join(ROOT, "models", name), copy)
    (result,) = run_commands(
        [["experiments.sample", f"--workdir={copy}", "--class_grid", "--temperatures=1.0"]]
    )
    assert result.returncode == 0, result.stderr
    assert glob.glob(str(copy / "class_grid_T1.0*.png"))
