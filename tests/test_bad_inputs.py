"""Bad inputs a user can give the command-line tools: each is one line on stderr starting
with ``error:`` and exit status 2, with nothing after it (README "Bad inputs" lists them).

Anything that is not a user error keeps its traceback; ``--debug`` shows it for user errors.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from configs import glow_digits_cond
from flows import workdir as wd
from flows.errors import CheckpointError, ConfigError
from flows.train.loop import train_and_evaluate
from tests import cli_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "configs/glow_digits_cond.py:smoke"


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    """A label-conditioned smoke run (20 steps, checkpoints at 10 and 20)."""
    workdir = str(tmp_path_factory.mktemp("cond_smoke"))
    config = glow_digits_cond.get_config("smoke")
    config.train.progress = False
    train_and_evaluate(config, workdir)
    return workdir


def _copy(run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(run, workdir)
    return str(workdir)


def _train(workdir, *overrides, config=SMOKE):
    return [
        "experiments.train",
        f"--config={config}",
        f"--workdir={workdir}",
        "--config.train.progress=False",
        *overrides,
    ]


def run_cli(args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def fails_in_one_line(args, *expected):
    """Runs the command; exit status 2 after one ``error:`` line naming ``expected``."""
    return cli_checks.assert_one_line_error(run_cli(args), *expected)


def test_misspelt_config_key(tmp_path):
    fails_in_one_line(_train(tmp_path, "--config.model.num_stepz=3"), "num_stepz")


def test_bad_value_type(tmp_path):
    line = fails_in_one_line(_train(tmp_path, "--config.train.batch_size=abc"), "batch_size")
    assert "'abc'" in line


def test_unknown_dataset(tmp_path):
    fails_in_one_line(_train(tmp_path, "--config.data.name=nosuchdata"), "nosuchdata")


def test_unprepared_catalog_dataset(tmp_path):
    data_dir = tmp_path / "tfds"
    args = _train(
        tmp_path / "run",
        "--config.data.name=mnist",
        f"--config.data.data_dir={data_dir}",
        "--config.data.download=False",
    )
    fails_in_one_line(args, "'mnist'", "not prepared", str(data_dir))


def test_image_shape_the_model_cannot_take(tmp_path):
    # 8x8 digits cannot be squeezed four times (8 -> 4 -> 2 -> 1 -> ?).
    fails_in_one_line(_train(tmp_path, "--config.model.num_levels=4"), "8x8", "pad_to")


def test_every_checkpoint_corrupt(cond_run, tmp_path):
    workdir = _copy(cond_run, tmp_path)
    cli_checks.corrupt_files(os.path.join(workdir, "checkpoints"))
    fails_in_one_line(_train(workdir), "no readable checkpoint", "unreadable")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]  # kept


def test_changed_config_on_resume(cond_run, tmp_path):
    workdir = _copy(cond_run, tmp_path)
    line = fails_in_one_line(
        _train(workdir, "--config.optim.lr=0.5", "--config.train.num_train_steps=40"),
        "optim.lr 0.001 -> 0.5",
        "train.num_train_steps 20 -> 40",
        "--allow_config_change",
    )
    assert "model's shapes" not in line


def test_model_shape_change_on_resume(cond_run, tmp_path):
    workdir = _copy(cond_run, tmp_path)
    fails_in_one_line(
        _train(workdir, "--config.model.hidden_channels=32"),
        "changes the model's shapes",
        "model.hidden_channels 16 -> 32",
    )
    # Allowing config changes does not allow another model.
    config = glow_digits_cond.get_config("smoke")
    config.train.progress = False
    config.model.hidden_channels = 32
    with pytest.raises(ConfigError, match="model.hidden_channels 16 -> 32"):
        train_and_evaluate(config, workdir, allow_config_change=True)


def test_out_of_range_label(cond_run):
    fails_in_one_line(
        ["experiments.sample", f"--workdir={cond_run}", "--label=10"], "--label", "0..9", "10"
    )
    assert not os.path.exists(os.path.join(cond_run, "samples_T0.7_label10.png"))


def test_non_finite_batches(tmp_path):
    args = _train(
        tmp_path,
        "--config.optim.lr=1e30",
        "--config.optim.max_consecutive_nonfinite=3",
        config="configs/glow_digits.py:smoke",
    )
    fails_in_one_line(args, "TrainingError", "non-finite steps in a row")


def test_workdir_that_cannot_be_written(tmp_path):
    # Under a regular file (root ignores permission bits, so chmod would prove nothing).
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    fails_in_one_line(_train(blocker / "run"), "cannot write to --workdir", "a_file")


def test_workdir_another_run_trains_in(cond_run, tmp_path):
    """A second training on a workdir whose lock is held (here by this process, as a first
    run's would be) is refused before it touches anything: the first run's partial writes
    stay, nothing is written; the lock a finished run held is free again."""
    workdir = _copy(cond_run, tmp_path)
    partial = os.path.join(workdir, ".metrics.jsonl.first-run.tmp")  # the first run's write
    open(partial, "w").close()
    before = sorted(os.listdir(workdir))
    lock = wd.RunLock(workdir)  # the copy's lock; the train_and_evaluate of cond_run is done
    try:
        fails_in_one_line(
            _train(workdir), "in use by another training run", f"pid {os.getpid()} on "
        )
    finally:
        lock.release()
    assert sorted(os.listdir(workdir)) == before
    held = wd.RunLock(workdir)  # free again
    with pytest.raises(CheckpointError, match="in use by another training run"):
        wd.RunLock(workdir)  # a second holder, even in one process
    held.release()


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    out = run_cli(_train(tmp_path, "--config.model.num_levels=4", "--debug"))
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "ConfigError" in out.stderr


def test_a_bug_keeps_its_traceback():
    """Errors that are not the project's own (here a TypeError from the code) are bugs:
    they are not turned into one line."""
    script = "from experiments import cli\ndef main(argv):\n    return len(3)\ncli.run(main)\n"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 1 and "Traceback" in out.stderr and "TypeError" in out.stderr
    assert "error: " not in out.stderr.splitlines()[-1]
