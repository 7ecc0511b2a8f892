"""The workdir is a contract: one config per run (changes refused, or allowed and recorded),
model selection that cannot go stale, fallback past a corrupt checkpoint."""

from __future__ import annotations

import glob
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from configs import glow_digits
from flows import workdir as wd
from flows.errors import ConfigError
from flows.reporting import compare
from flows.train.loop import train_and_evaluate
from tests.cli_checks import corrupt_files
from tests.tensorboard_checks import assert_events_match_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**train):
    config = glow_digits.get_config("smoke")
    config.train.progress = False
    config.train.update(train)
    return config


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """An unconditional smoke run: 20 steps, validation and checkpoints at 10 and 20."""
    workdir = str(tmp_path_factory.mktemp("base"))
    return workdir, train_and_evaluate(_config(), workdir)


def _copy(run, tmp_path, name="run"):
    workdir = str(tmp_path / name)
    shutil.copytree(run, workdir)
    return workdir


def _steps(directory):
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


@pytest.mark.slow
def test_eval_record_names_the_checkpoint_it_evaluated(base_run):
    workdir, record = base_run
    step = record["checkpoint_step"]
    assert record["checkpoint"] == os.path.join(os.path.abspath(workdir), "best", str(step))
    assert record["parameters"] == "ema" and record["config_changed_at"] == []
    assert _steps(os.path.join(workdir, "best")) == [step]


@pytest.mark.slow
def test_allowed_config_change_resumes_and_is_recorded(base_run, tmp_path):
    workdir = _copy(base_run[0], tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config=configs/glow_digits.py:smoke",
        f"--workdir={workdir}",
        "--config.train.progress=False",
        "--config.optim.lr=0.5",
        "--config.train.num_train_steps=40",
        "--allow_config_change",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from {os.path.join(workdir, 'checkpoints', '20')}" in out.stdout
    changes = {"optim.lr": [0.001, 0.5], "train.num_train_steps": [20, 40]}
    assert wd.read_config_history(workdir) == [{"step": 20, "changes": changes}]
    assert wd.load_config(workdir).optim.lr == 0.5  # config.json: the config from now on
    record = wd.read_json(os.path.join(workdir, wd.EVAL_TEST))
    assert record["config_changed_at"] == [{"step": 20, "keys": sorted(changes)}]
    assert record["train_steps"] == 40

    row = compare.compare([compare.read_run_summary(workdir)]).rows[0]
    assert row["config_changed_at"] == "step 20: optim.lr, train.num_train_steps"
    assert "config changed mid-run" in row["note"]

    # The stored config is now the changed one: it resumes as is (the progress bar is not
    # part of the contract, nor is train.tensorboard, absent from a config.json written
    # before it existed), the original is refused.
    stored = wd.read_json(os.path.join(workdir, wd.CONFIG))
    del stored["train"]["tensorboard"]
    wd.write_json(os.path.join(workdir, wd.CONFIG), stored)
    new = _config(num_train_steps=40, progress=True)
    new.optim.lr = 0.5
    record = train_and_evaluate(new, workdir)
    # TensorBoard, after three sessions (0-20, 20-40, and this one, which trained nothing
    # and rewrote the final evaluation at step 40): every step once.
    assert_events_match_metrics(workdir, record)
    with pytest.raises(ConfigError, match=r"optim.lr 0.5 -> 0.001.*num_train_steps 40 -> 20"):
        train_and_evaluate(_config(), workdir)
    assert len(wd.read_config_history(workdir)) == 1


def _plant_stale_best(workdir, step=999):
    """A best/ state of a step this run never reaches (left by an earlier run)."""
    best = os.path.join(workdir, "best")
    shutil.copytree(os.path.join(best, str(_steps(best)[-1])), os.path.join(best, str(step)))


@pytest.mark.slow
@pytest.mark.parametrize("checkpoints_left", ["first", "none"])
def test_best_ahead_of_checkpoints_is_never_reported(base_run, tmp_path, checkpoints_left):
    """best/ holds a step the rerun did not produce: resuming from step 10 (``first``), or a
    fresh start (``none``: a run killed before its first checkpoint). The stale state is
    dropped, and the rerun reports exactly what the uninterrupted run reported."""
    workdir = _copy(base_run[0], tmp_path)
    _plant_stale_best(workdir)
    for step in _steps(os.path.join(workdir, "checkpoints")):
        if checkpoints_left == "none" or step > 10:
            shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
    record = train_and_evaluate(_config(), workdir)
    assert 999 not in _steps(os.path.join(workdir, "best"))
    assert record["checkpoint_step"] <= 20
    assert record["checkpoint_step"] == base_run[1]["checkpoint_step"]
    assert record["bits_per_dim"] == base_run[1]["bits_per_dim"]
    # TensorBoard: the copied run's events are dropped by the restart marker of the rerun;
    # a fresh start deletes the earlier run's event file.
    assert_events_match_metrics(workdir, record)
    events = glob.glob(os.path.join(workdir, wd.EVENTS_PREFIX + "*"))
    assert len(events) == (1 if checkpoints_left == "none" else 2)


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(base_run, tmp_path, capsys):
    workdir = _copy(base_run[0], tmp_path)
    corrupt_files(os.path.join(workdir, "checkpoints", "20"))
    with open(os.path.join(workdir, ".config.json.abc.tmp"), "w") as f:
        f.write('{"half": ')  # a write a killed run left half done
    # A config.json written before model fields existed resumes: a missing field is its
    # default (flows.models.registry.with_defaults).
    with open(os.path.join(workdir, "config.json")) as f:
        stored = json.load(f)
    for field in ("dequantization", "dequantizer_steps", "spline_bound"):
        del stored["model"][field]
    wd.write_json(os.path.join(workdir, "config.json"), stored)
    record = train_and_evaluate(_config(), workdir)
    said = [line for line in capsys.readouterr().out.splitlines() if "unreadable" in line]
    moved = os.path.join(workdir, "corrupt", "checkpoints-20")
    assert said == [f"checkpoint 20 is unreadable: moved to {moved}; resuming from step 10"]
    assert os.path.isdir(moved) and _steps(os.path.join(workdir, "checkpoints")) == [10, 20]
    assert not os.path.exists(os.path.join(workdir, ".config.json.abc.tmp"))
    assert record["bits_per_dim"] == base_run[1]["bits_per_dim"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [5, 10, 15, 20]
    # TensorBoard: steps 15 and 20 once each, with the resumed session's values (its
    # images_per_s differs from the first session's).
    assert_events_match_metrics(workdir, record)


def test_presentation_keys_may_differ_or_be_absent():
    """``train.progress`` and ``train.tensorboard`` change what a run shows, not what it
    computes: no config change, also against a config.json written before they existed."""
    stored = _config().to_dict()
    del stored["train"]["tensorboard"]
    assert wd.config_changes(stored, _config().to_dict()) == {}
    assert wd.config_changes(stored, _config(tensorboard=False, progress=True).to_dict()) == {}


@pytest.mark.slow
def test_a_directory_no_run_wrote_in_keeps_its_files(base_run, tmp_path):
    """A fresh start clears what an earlier run left (above) only where a run wrote its
    config.json: a user's own directory keeps its files."""
    workdir = tmp_path / "mine"
    (workdir / "samples").mkdir(parents=True)
    (workdir / "samples" / "figure.png").write_bytes(b"png")
    (workdir / "eval_notes.json").write_text("{}")
    record = train_and_evaluate(_config(), str(workdir))
    assert (workdir / "samples" / "figure.png").read_bytes() == b"png"
    assert (workdir / "eval_notes.json").read_text() == "{}"
    assert record["bits_per_dim"] == base_run[1]["bits_per_dim"]
    # Files written through atomic_file get the permissions of any new file (umask), not
    # the temporary file's 0600.
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "eval_test.json", "samples.png"):
        assert stat.S_IMODE(os.stat(workdir / name).st_mode) == 0o666 & ~umask, name
