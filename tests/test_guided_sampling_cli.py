"""The command lines of the guided model's density, Jacobi sampling and sample scores, on a
conditional TarFlow digits smoke run (``tarflow_digits.py:smoke,cond``, label dropout 0.1,
2 steps): ``experiments.evaluate --guidance``, ``experiments.sample --sampler`` (its JSON
record beside the PNG) and ``experiments.sample --score``, and their bad values (one
``error:`` line, exit status 2, nothing written). The maths is tested in tests/test_jacobi.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from configs import tarflow_digits
from flows.train.loop import train_and_evaluate
from tests import cli_checks


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = tarflow_digits.get_config("smoke,cond")
    config.train.progress = False
    config.train.num_train_steps = 2
    config.train.eval_every = config.train.checkpoint_every = config.train.log_every = 2
    workdir = str(tmp_path_factory.mktemp("tarflow_digits_cond"))
    train_and_evaluate(config, workdir)
    return workdir, config.model.num_blocks


def _read(workdir, name):
    with open(os.path.join(workdir, name)) as f:
        return json.load(f)


def _ok(result):
    assert result.returncode == 0, (result.args, result.stderr[-3000:])
    return result.stdout


@pytest.mark.slow
def test_guided_evaluation_jacobi_sampling_and_scores(run):
    workdir, num_blocks = run
    w = f"--workdir={workdir}"
    results = cli_checks.run_commands(
        [
            ["experiments.evaluate", w, "--guidance=1"],
            [
                "experiments.sample",
                w,
                "--num=4",
                "--guidance=1",
                "--sampler=jacobi",
                "--jacobi_chunk=5",
                "--jacobi_tol=1e-5",
            ],
            [
                "experiments.sample",
                w,
                "--class_grid",
                "--temperatures=1",
                "--per_temperature=1",
                "--sampler=auto",
            ],
            [
                "experiments.sample",
                w,
                "--score",
                "--guidances=0,1",
                "--per_class=2",
                "--temperature=1",
                "--sampler=jacobi",
                "--jacobi_max_iters=4",
            ],
        ]  # fmt: skip
    )
    for result in results:
        _ok(result)
    plain, guided = _read(workdir, "eval_test.json"), _read(workdir, "eval_test_k1_w1.json")
    assert "guided model (w=1)" in results[0].stdout
    assert guided["guidance"] == 1.0 and "guidance" not in plain
    assert np.isfinite(guided["bits_per_dim"]) and guided["bits_per_dim"] != plain["bits_per_dim"]

    record = _read(workdir, "samples_T0.7_w1_jacobi.json")
    assert record["png"] == os.path.join(workdir, "samples_T0.7_w1_jacobi.png")
    assert os.path.exists(record["png"]) and record["guidance"] == 1.0
    assert record["sampler"]["methods"] == "jacobi" and record["sampler"]["jacobi_chunk"] == 5
    (call,) = record["calls"]
    assert len(call["updates"]) == num_blocks and all(1 <= n <= 4 * 5 for n in call["updates"])
    assert call["converged"] == [True] * num_blocks

    grid = _read(workdir, "class_grid_T1_auto.json")
    methods = grid["sampler"]["methods"]
    assert len(methods) == num_blocks and set(methods) <= {"sequential", "jacobi"}
    assert grid["sampler"]["reason"].startswith("auto on cpu, batch 1: sequential ")
    assert [c["label"] for c in grid["calls"]] == list(range(10))

    sweep = _read(workdir, "guidance_sweep.json")
    assert os.path.exists(os.path.join(workdir, "guidance_sweep.png"))
    assert [r["guidance"] for r in sweep["rows"]] == [0.0, 1.0] and sweep["num_samples"] == 20
    first = sweep["rows"][0]
    # w = 0 with the run's evaluation noise: the run's conditional test bits/dim.
    assert first["test_guided_bits_per_dim"] == pytest.approx(plain["bits_per_dim"], abs=1e-6)
    assert first["sample_guided_bits_per_dim"] == first["sample_bits_per_dim"]
    for row in sweep["rows"]:
        assert 0 <= row["sample_accuracy"] <= 1 and row["diversity"] > 0
        assert all(np.isfinite(row[k]) for k in row if k.endswith("bits_per_dim"))
        assert all(len(c["updates"]) == num_blocks for c in row["sampler_stats"])
    assert sweep["sampler"]["name"] == "jacobi" and sweep["temperature"] == 1.0


@pytest.mark.slow
def test_bad_values_are_one_line_errors(run):
    workdir, _ = run
    before = sorted(os.listdir(workdir))
    w = f"--workdir={workdir}"
    cases = [
        (["experiments.sample", w, "--jacobi_tol=nan"], "--jacobi_tol=nan", "finite"),
        (["experiments.sample", w, "--jacobi_tol=-0.1"], "--jacobi_tol=-0.1", ">= 0"),
        (["experiments.sample", w, "--jacobi_max_iters=0"], "--jacobi_max_iters=0"),
        (["experiments.sample", w, "--jacobi_chunk=0"], "--jacobi_chunk=0"),
        (
            ["experiments.sample", w, "--sampler=newton"],
            "--sampler=newton",
            "sequential|jacobi|auto",
        ),
        (["experiments.sample", w, "--guidances=1"], "--guidances is for --score"),
        (["experiments.sample", w, "--score", "--label=1"], "--score draws every class"),
        (["experiments.sample", w, "--score", "--guidances=1,nan"], "--guidances", "finite"),
        (["experiments.evaluate", w, "--guidance=nan"], "--guidance=nan", "finite"),
        (["experiments.evaluate", w, "--guidance=-1"], "--guidance=-1", ">= 0"),
        (
            ["experiments.evaluate", w, "--guidance=1", "--dataset=digits_inverted"],
            "--guidance and --dataset do not go together",
        ),
    ]
    results = cli_checks.run_commands([command for command, *_ in cases])
    for (_, *expected), result in zip(cases, results, strict=True):
        cli_checks.assert_one_line_error(result, *expected)
    assert sorted(os.listdir(workdir)) == before
