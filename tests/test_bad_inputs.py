"""Bad inputs a user can give the command-line tools: each is one line on stderr starting
with ``error:`` and exit status 2, with nothing after it (README "Bad inputs" lists them).

Anything that is not a user error keeps its traceback; ``--debug`` shows it for user errors.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
import re
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


@pytest.fixture(scope="module")
def cli():
    """``cli([module, *args])``: the command run as ``python -m module args`` would run it
    (``cli_checks.CommandRunner``: each a fork of one interpreter that imported the libraries
    once), a ``subprocess.CompletedProcess``."""
    with cli_checks.CommandRunner() as runner:
        yield runner


def run_cli(args, env=None):
    """``python -m *args`` in a process of its own, with ``env`` added to its environment."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def fails_in_one_line(cli, args, *expected):
    """Runs the command; exit status 2 after one ``error:`` line naming ``expected``."""
    return cli_checks.assert_one_line_error(cli(args), *expected)


@pytest.mark.slow
def test_misspelt_config_key(tmp_path, cli):
    fails_in_one_line(cli, _train(tmp_path, "--config.model.num_stepz=3"), "num_stepz")


@pytest.mark.slow
def test_bad_value_type(tmp_path, cli):
    line = fails_in_one_line(cli, _train(tmp_path, "--config.train.batch_size=abc"), "batch_size")
    assert "'abc'" in line


@pytest.mark.slow
def test_unknown_dataset(tmp_path, cli):
    fails_in_one_line(cli, _train(tmp_path, "--config.data.name=nosuchdata"), "nosuchdata")


@pytest.mark.slow
def test_unprepared_catalog_dataset(tmp_path, cli):
    data_dir = tmp_path / "tfds"
    args = _train(
        tmp_path / "run",
        "--config.data.name=mnist",
        f"--config.data.data_dir={data_dir}",
        "--config.data.download=False",
    )
    fails_in_one_line(cli, args, "'mnist'", "not prepared", str(data_dir))
    assert not os.path.exists(tmp_path / "run")  # the workdir it made is removed again


@pytest.mark.slow
def test_a_folder_dataset_without_its_folder(tmp_path, cli):
    data_dir = tmp_path / "tfds"
    args = _train(
        tmp_path / "run", "--config.data.name=afhq/64", f"--config.data.data_dir={data_dir}"
    )
    fails_in_one_line(cli, args, "'afhq/64'", "its files are not there", f"{data_dir}/downloads")
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_image_shape_the_model_cannot_take(tmp_path, cli):
    # 8x8 digits cannot be squeezed four times (8 -> 4 -> 2 -> 1 -> ?).
    fails_in_one_line(cli, _train(tmp_path, "--config.model.num_levels=4"), "8x8", "pad_to")


@pytest.mark.slow
def test_every_checkpoint_corrupt(cond_run, tmp_path, cli):
    workdir = _copy(cond_run, tmp_path)
    cli_checks.corrupt_files(os.path.join(workdir, "checkpoints"))
    fails_in_one_line(cli, _train(workdir), "no readable checkpoint", "unreadable")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20"]  # kept


@pytest.mark.slow
def test_changed_config_on_resume(cond_run, tmp_path, cli):
    workdir = _copy(cond_run, tmp_path)
    line = fails_in_one_line(
        cli,
        _train(workdir, "--config.optim.lr=0.5", "--config.train.num_train_steps=40"),
        "optim.lr 0.001 -> 0.5",
        "train.num_train_steps 20 -> 40",
        "--allow_config_change",
    )
    assert "model's shapes" not in line


@pytest.mark.slow
def test_model_shape_change_on_resume(cond_run, tmp_path, cli):
    workdir = _copy(cond_run, tmp_path)
    fails_in_one_line(
        cli,
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


@pytest.mark.slow
def test_out_of_range_label(cond_run, cli):
    fails_in_one_line(
        cli,
        ["experiments.sample", f"--workdir={cond_run}", "--label=10"],
        "--label",
        "0..9",
        "10",
    )
    assert not os.path.exists(os.path.join(cond_run, "samples_T0.7_label10.png"))


@pytest.mark.slow
def test_non_finite_batches(tmp_path, cli):
    args = _train(
        tmp_path,
        "--config.optim.lr=1e30",
        "--config.optim.max_consecutive_nonfinite=3",
        config="configs/glow_digits.py:smoke",
    )
    fails_in_one_line(cli, args, "TrainingError", "non-finite steps in a row")


@pytest.mark.slow
def test_workdir_that_cannot_be_written(tmp_path, cli):
    # Under a regular file (root ignores permission bits, so chmod would prove nothing).
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    fails_in_one_line(cli, _train(blocker / "run"), "cannot write to --workdir", "a_file")


@pytest.mark.slow
def test_workdir_another_run_trains_in(cond_run, tmp_path, cli):
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
            cli, _train(workdir), "in use by another training run", f"pid {os.getpid()} on "
        )
    finally:
        lock.release()
    assert sorted(os.listdir(workdir)) == before
    held = wd.RunLock(workdir)  # free again
    with pytest.raises(CheckpointError, match="in use by another training run"):
        wd.RunLock(workdir)  # a second holder, even in one process
    held.release()


@pytest.mark.slow
def test_debug_shows_the_traceback_of_a_user_error(tmp_path, cli):
    out = cli(_train(tmp_path, "--config.model.num_levels=4", "--debug"))
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "ConfigError" in out.stderr


@pytest.mark.slow
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


def _snapshot(directory) -> dict:
    """Every file under ``directory`` with its size and modification time."""
    found = {}
    for root, _, files in os.walk(directory):
        for name in files:
            st = os.stat(os.path.join(root, name))
            found[os.path.relpath(os.path.join(root, name), directory)] = (st.st_size, st.st_mtime)
    return found


def _all_fail_in_one_line(cli, cases):
    """``cases``: ``(command, *expected)``."""
    for command, *expected in cases:
        cli_checks.assert_one_line_error(cli(command), *expected)


@pytest.mark.slow
def test_config_files_that_cannot_be_used(tmp_path, cli):
    """A missing config file, a directory, one that does not parse, one without get_config,
    an unknown variant: one line naming the file, for train and toy_tables; no workdir."""
    syntax, no_get = tmp_path / "syntax.py", tmp_path / "no_get_config.py"
    syntax.write_text("def get_config(:\n")
    no_get.write_text("CONFIG = 1\n")
    workdir = tmp_path / "run"
    files = [
        ("configs/nosuch.py", "config file configs/nosuch.py does not exist"),
        ("configs", "config file configs is a directory"),
        (f"{syntax}:smoke", f"config file {syntax} does not parse", "line 1"),
        (str(no_get), f"config file {no_get} has no get_config() function"),
        ("configs/glow_digits.py:nosuch", "config file configs/glow_digits.py", "'nosuch'"),
    ]
    cases = []
    for file, *expected in files:
        cases.append((_train(workdir, config=file), *expected))
        cases.append((["experiments.toy_tables", f"--config={file}"], *expected))
    _all_fail_in_one_line(cli, cases)
    assert not os.path.exists(workdir)


@pytest.mark.slow
def test_numeric_config_fields_are_checked_before_the_workdir(tmp_path, cli):
    workdir = tmp_path / "run"
    overrides = [
        ("train.batch_size=0", "train.batch_size must be an integer >= 1, got 0"),
        ("optim.lr=nan", "optim.lr must be a finite number > 0, got nan"),
        ("optim.lr=-1", "optim.lr must be a finite number > 0, got -1.0"),
        ("train.num_train_steps=0", "train.num_train_steps must be an integer >= 1, got 0"),
        ("eval.num_samples=0", "eval.num_samples must be an integer >= 1, got 0"),
        ("train.log_every=-3", "train.log_every must be an integer >= 0, got -3"),
        ("train.ema_decay=1.0", "train.ema_decay must be a number in [0, 1), got 1.0"),
        ("data.validation_size=-1", "data.validation_size must be an integer >= 0, got -1"),
        # A model field: the model family's own check; the workdir it made is removed again.
        ("model.label_dropout=nan", "model.label_dropout must be in [0, 1), got nan"),
    ]
    cases = [(_train(workdir, f"--config.{o}"), message) for o, message in overrides]
    toy = ["experiments.toy_tables", "--config=configs/toy_gender_age.py:smoke"]
    cases.append(([*toy, "--config.optim.lr=inf"], "optim.lr must be a finite number > 0"))
    _all_fail_in_one_line(cli, cases)
    assert not os.path.exists(workdir)


def test_every_checked_config_field_refuses_a_bad_value():
    """Each field of the table refuses NaN and a value just out of its range, naming itself;
    every config file's config passes."""
    from configs.base import base_config
    from flows.train import config_checks

    good = base_config().to_dict()
    config_checks.check_config(good)
    out_of_range = {"optim.lr": 0.0, "optim.b2": 1.0, "train.distributed.process_id": -2}
    out_of_range.update({"data.pad_to": (32,), "data.n_bits": 0, "train.batch_size": True})
    for field in config_checks.FIELDS:
        for bad in (math.nan, out_of_range.get(field, -1)):
            config = copy.deepcopy(good)
            *sections, name = field.split(".")
            node = config
            for section in sections:
                node = node[section]
            node[name] = bad
            with pytest.raises(ConfigError, match=rf"^{re.escape(field)} must be .*, got "):
                config_checks.check_config(config)
    for file in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if not file.endswith(".py"):
            continue
        module = importlib.import_module(f"configs.{file[:-3]}")
        if hasattr(module, "get_config"):
            for variant in (None, "smoke"):
                config_checks.check_config(module.get_config(variant))


@pytest.mark.slow
def test_bad_flags_of_the_tools(cond_run, tmp_path, cli):
    """Flags out of range, and flags that do not go together: one line each, before the
    workdir is read; nothing in it changes. Guidance on a Glow says Glow has none."""
    before = _snapshot(cond_run)
    run = f"--workdir={cond_run}"
    cases = [
        (["experiments.evaluate", run, "--num_samples=0"], "--num_samples=0"),
        (["experiments.evaluate", run, "--batch_size=-1"], "--batch_size=-1"),
        (["experiments.sample", run, "--num=0"], "--num=0"),
        (["experiments.sample", run, "--temperature=nan"], "--temperature=nan", "finite"),
        (["experiments.sample", run, "--temperatures=0.5,-1"], "--temperatures", ">= 0"),
        (["experiments.sample", run, "--temperatures=0.5,x"], "--temperatures", "numbers"),
        (["experiments.sample", run, "--per_temperature=0"], "--per_temperature=0"),
        (["experiments.sample", run, "--guidance=nan"], "--guidance=nan", "finite"),
        (["experiments.sample", run, "--label=3", "--class_grid"], "--label and --class_grid"),
        (
            ["experiments.sample", run, "--guidance=2"],
            "Glow has no classifier-free guidance",
        ),
        (["experiments.latents", run, "--pairs=0"], "--pairs must be at least 1, got 0"),
        (["experiments.latents", run, "--steps=0"], "--steps must be at least 2, got 0"),
        (["experiments.latents", run, "--seed=-1"], "--seed=-1"),
    ]
    for command, *expected in cases:
        line = cli_checks.assert_one_line_error(cli(command), *expected)
        assert "label_dropout" not in line
    assert _snapshot(cond_run) == before


@pytest.mark.slow
def test_workdirs_that_are_not_runs(tmp_path, cli):
    empty, damaged, no_info = tmp_path / "empty", tmp_path / "damaged", tmp_path / "no_info"
    for directory in (empty, damaged, no_info):
        directory.mkdir()
    (damaged / "config.json").write_text("{not json")
    (no_info / "config.json").write_text("{}")
    cases = []
    for tool in ("experiments.evaluate", "experiments.sample", "experiments.latents"):
        cases += [
            ([tool, f"--workdir={tmp_path / 'nosuch'}"], "nosuch does not exist"),
            ([tool, f"--workdir={empty}"], "is not a training workdir (no config.json)"),
            ([tool, f"--workdir={damaged}"], f"{damaged / 'config.json'} cannot be read"),
            ([tool, f"--workdir={no_info}"], "is not a training workdir (no data_info.json)"),
        ]
    cases += [
        (_train(damaged), f"{damaged / 'config.json'} cannot be read"),  # the run to resume
        (["experiments.compare", str(tmp_path / "nosuch")], "no such workdir"),
        (["experiments.compare", str(empty)], "not a training workdir"),
        (["experiments.compare", str(damaged)], "not valid JSON"),
    ]
    _all_fail_in_one_line(cli, cases)
    assert sorted(os.listdir(tmp_path)) == ["damaged", "empty", "no_info"]
    assert os.listdir(empty) == [] and os.listdir(damaged) == ["config.json"]


@pytest.mark.slow
def test_evaluate_names_its_step_and_keeps_a_record_of_another(cond_run, tmp_path, cli):
    """An evaluation says which checkpoint step it used; evaluating again at another step
    (here: the run's latest checkpoint gone, as if it trained on) keeps the earlier record
    under a name with its step, and compare still reads the record by its name."""
    workdir = _copy(cond_run, tmp_path)
    evaluate = ["experiments.evaluate", f"--workdir={workdir}", "--checkpoint=latest"]
    first = cli(evaluate)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "step 20" in first.stdout and os.path.join("checkpoints", "20") in first.stdout
    shutil.rmtree(os.path.join(workdir, "checkpoints", "20"))
    compare = ["experiments.compare", workdir, "--eval=eval_test_k1.json"]
    second = cli(evaluate)
    compared = cli([*compare, f"--out={tmp_path / 'compare'}"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "step 10" in second.stdout and "kept as eval_test_k1_step20.json" in second.stdout
    assert wd.read_json(os.path.join(workdir, "eval_test_k1.json"))["checkpoint_step"] == 10
    kept = wd.read_json(os.path.join(workdir, "eval_test_k1_step20.json"))
    assert kept["checkpoint_step"] == 20
    assert compared.returncode == 0, compared.stderr[-3000:]


@pytest.mark.slow
def test_help_of_every_command(cli):
    """``--help`` and ``-h`` exit 0 with the usage; usage lines have no runs of spaces;
    train's and toy_tables' help name the config files that run them, with variants."""
    tools = ["train", "evaluate", "sample", "latents", "compare", "toy_tables", "convert", "export"]
    commands = [[f"experiments.{t}", flag] for t in tools for flag in ("--help", "-h")]
    results = {tuple(command): cli(command) for command in commands}
    for (module, _), result in results.items():
        assert result.returncode == 0, (module, result.stderr[-2000:])
        usage = result.stdout.split("\nflags:\n")[0]
        assert f"python -m {module}" in usage, result.stdout
        assert not re.search(r"\S {2,}\S", usage), usage
    config_dir = os.path.join(ROOT, "configs")
    for module in ("experiments.train", "experiments.toy_tables"):
        text = results[(module, "--help")].stdout
        for name in os.listdir(config_dir):
            with open(os.path.join(config_dir, name)) as f:
                runs_it = f"python -m {module} " in f.read()
            assert (f"configs/{name} " in text) == runs_it, (module, name)
    train_help = results[("experiments.train", "--help")].stdout
    assert "configs/glow_digits_cond.py (variants: smoke, top, aux)" in train_help
    assert "configs/tarflow_digits.py (variants: small, smoke, cond, gen, linear)" in train_help


@pytest.mark.slow
def test_a_catalog_dataset_that_cannot_be_downloaded(tmp_path):
    """No network (a proxy nobody listens on): TFDS's banner and progress bars are not
    printed before the one line; the workdir the command made is gone again."""
    args = _train(
        tmp_path / "run",
        "--config.data.name=mnist",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
    )
    proxy = "http://127.0.0.1:9"
    result = run_cli(args, env={"HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "NO_PROXY": ""})
    cli_checks.assert_one_line_error(result, "'mnist'", "cannot be prepared here")
    assert result.stdout == ""
    assert not os.path.exists(tmp_path / "run")
