"""What a training run tells a person, read from its output as a user sees it.

One ``:smoke`` training of the conditional digits model, as a user runs it (``python -m
experiments.train``, a subprocess, ``--config.train.progress=False``), on a data_dir where the
digits are not prepared yet and with a warmup as long as the run: its first line says the
digits are being prepared (and nothing of TFDS's is printed), one warning line says the
learning rate never reaches ``optim.lr``, and its last line names what it wrote and how long
it took. Its sample grids have a row per class. The preparation message and the warning are
also checked in-process (no training).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from configs import glow_digits_cond
from flows import plotting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# flows.train.loop's durations: "42 s", "3 min 5 s", "2 h 7 min" (a loaded machine takes
# minutes).
DURATION = r"(?:\d+ s|\d+ min \d+ s|\d+ h \d+ min)"
TFDS_NOISE = ("Downloading and preparing", "downloaded and prepared", "Generating", "Shuffling")


def _preparing_line(data_dir) -> str:
    return f"preparing the offline digits dataset in {data_dir}/digits/1.0.0 (once, a few seconds)"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """``(workdir, data_dir, result)`` of one smoke training: 20 steps, warmup 20, sample
    grids every 10 steps, digits prepared by this run."""
    data_dir = tmp_path_factory.mktemp("tfds")
    workdir = tmp_path_factory.mktemp("runs") / "digits_cond"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
    args = (
        "--config=configs/glow_digits_cond.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.train.progress=False",
        "--config.optim.warmup_steps=20",
        "--config.train.sample_every=10",
    )
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return str(workdir), str(data_dir), result


@pytest.mark.slow
def test_first_run_prints_one_line_while_the_digits_are_prepared(smoke):
    _, data_dir, result = smoke
    lines = result.stdout.splitlines()
    assert lines[0] == _preparing_line(data_dir)
    assert sum("digits" in line and "preparing" in line for line in lines) == 1
    for noise in TFDS_NOISE:
        assert noise not in result.stdout and noise not in result.stderr, noise
    assert os.path.isdir(os.path.join(data_dir, "digits", "1.0.0"))


@pytest.mark.slow
def test_a_warmup_as_long_as_the_run_is_one_warning_line_and_the_run_goes_on(smoke):
    workdir, _, result = smoke
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    # The last (20th) update's rate: lr * (1/w + (1 - 1/w) * 19/w) with w = 20, lr = 1e-3.
    last = 1e-3 * (1 / 20 + (1 - 1 / 20) * 19 / 20)
    assert warnings == [
        "warning: optim.warmup_steps=20 >= train.num_train_steps=20: the learning rate never "
        f"reaches optim.lr=0.001 (the last step's is {last:.3g})"
    ]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert records[-1]["step"] == 20 and records[-1]["lr"] == pytest.approx(last, rel=1e-6)


@pytest.mark.slow
def test_last_line_names_what_was_written_and_the_wall_time(smoke):
    workdir, _, result = smoke
    last = result.stdout.strip().splitlines()[-1]
    pattern = (
        rf"wrote {re.escape(workdir)}: samples\.png \(final sample grid\), samples/ \(2 grids "
        r"during training\), learning_curves\.png, eval_test\.json and eval_test\.npz \(test "
        r"record, per example values\), "
        r"metrics\.jsonl, checkpoints/ \(steps 10, 20\), best/ \(step (\d+)\), TensorBoard "
        rf"events; wall time {DURATION} \({DURATION} of training steps\)"
    )
    match = re.fullmatch(pattern, last)
    assert match, last
    assert os.path.isdir(os.path.join(workdir, "best", match.group(1)))
    names = (
        "samples.png",
        "learning_curves.png",
        "eval_test.json",
        "eval_test.npz",
        "metrics.jsonl",
    )
    for name in names:
        assert os.path.isfile(os.path.join(workdir, name)), name
    assert sorted(os.listdir(os.path.join(workdir, "samples"))) == [
        "step_000010.png",
        "step_000020.png",
    ]
    # The line before it is the test result, naming the evaluation record.
    assert result.stdout.strip().splitlines()[-2].endswith(f"-> {workdir}/eval_test.json")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, title",
    [
        ("samples.png", r"samples of the selected parameters \(ema, step \d+\)"),
        ("samples/step_000010.png", r"samples at step 10"),
    ],
)
def test_training_sample_grids_have_a_row_per_class(smoke, name, title):
    workdir, _, _ = smoke
    with Image.open(os.path.join(workdir, name)) as image:
        image.load()
    grid = json.loads(image.text[plotting.GRID_TEXT_KEY])
    grid_title = grid.pop("title")
    assert re.fullmatch(title, grid_title), grid_title
    # 16 grid samples over 10 classes: a row of ceil(16 / 10) = 2 samples per class.
    assert grid == {
        "rows": 10,
        "columns": [2],
        "headers": ["T=0.7"],
        "row_labels": [str(y) for y in range(10)],
        "corner": "class",
    }
    layout = plotting.grid_layout(
        10,
        (8, 8, 1),
        [("T=0.7", 2)],
        row_labels=grid["row_labels"],
        corner="class",
        title=grid_title,
    )
    assert image.mode == "L" and image.size == (layout.width, layout.height)


def test_preparing_the_digits_prints_one_line_once(tmp_path, capfd):
    from flows.data import loading

    loading.load_split("digits", "test", data_dir=str(tmp_path))
    out, err = capfd.readouterr()
    assert out == _preparing_line(tmp_path) + "\n"
    for noise in TFDS_NOISE:
        assert noise not in err, err
    loading.load_split("digits", "train", data_dir=str(tmp_path))  # prepared: silent
    assert capfd.readouterr().out == ""


def test_schedule_warning_only_when_the_warmup_is_as_long_as_the_run():
    from flows.train.loop import schedule_warning

    config = glow_digits_cond.get_config("smoke")  # 20 steps
    for warmup, warns in ((0, False), (5, False), (19, False), (20, True), (500, True)):
        config.optim.warmup_steps = warmup
        line = schedule_warning(config)
        assert (line is not None) == warns, warmup
        if warns:
            assert line.startswith(f"warning: optim.warmup_steps={warmup} >= ")
            assert "never reaches optim.lr" in line
