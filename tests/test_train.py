"""End-to-end training on :smoke configs: files written, exact resume after SIGKILL,
4 forced CPU devices equal 1, and one-line errors with a non-zero exit for bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from configs import glow_digits, glow_mnist
from flows.data.testing import mock_data
from flows.train.loop import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _train_cmd(workdir, *overrides, config="configs/glow_digits.py:smoke"):
    return [
        sys.executable,
        "-m",
        "experiments.train",
        f"--config={config}",
        f"--workdir={workdir}",
        "--config.train.progress=False",
        *overrides,
    ]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("digits_smoke"))
    config = glow_digits.get_config("smoke")
    config.train.progress = False
    record = train_and_evaluate(config, workdir)
    return workdir, record


def test_train_end_to_end_writes_everything(digits_run):
    workdir, record = digits_run
    for name in ("config.json", "metrics.jsonl", "samples.png", "learning_curves.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert os.listdir(os.path.join(workdir, "checkpoints"))
    with open(os.path.join(workdir, "eval_test.json")) as f:
        saved = json.load(f)
    assert saved["bits_per_dim"] == pytest.approx(record["bits_per_dim"])
    assert np.isfinite(record["bits_per_dim"]) and record["bits_per_dim"] > 0
    assert record["split"] == "digits:test" and record["num_examples"] == 300
    assert record["num_bins"] == 17 and record["dequantization"] == "uniform"
    assert record["selected_by"] == "best validation bits/dim"
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert all("val_bpd" in r for r in records if r["step"] % 10 == 0)
    # Training lowers bits/dim from the start (the uniform model is log2(17) = 4.09).
    assert records[-1]["train_bpd"] < records[0]["train_bpd"]


def test_catalog_dataset_trains_under_mock_data(tmp_path):
    config = glow_mnist.get_config("smoke")
    config.train.progress = False
    config.data.data_dir = str(tmp_path / "tfds")
    with mock_data(num_examples=40):
        record = train_and_evaluate(config, str(tmp_path / "run"))
    assert record["image_shape"] == [32, 32, 1] and record["num_bins"] == 256
    assert np.isfinite(record["bits_per_dim"])


def _final_params(workdir, step):
    """The raw parameter arrays of checkpoint ``step`` (read with orbax, no model needed)."""
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", str(step), "state")
    tree = ocp.StandardCheckpointer().restore(path)
    import jax

    return jax.tree.leaves(tree["params"])


def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    overrides = ["--config.train.num_train_steps=16", "--config.train.checkpoint_every=4"]
    ref = tmp_path / "uninterrupted"
    subprocess.run(_train_cmd(ref, *overrides), cwd=ROOT, env=_env(), check=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, *overrides), cwd=ROOT, env=_env())
    deadline = time.time() + 300
    ckpt_dir = killed / "checkpoints"
    while time.time() < deadline:
        done = [d for d in (os.listdir(ckpt_dir) if ckpt_dir.exists() else []) if d.isdigit()]
        if any(int(d) >= 8 for d in done) or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "eval_test.json").exists()
    out = subprocess.run(
        _train_cmd(killed, *overrides), cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stdout
    for a, b in zip(_final_params(ref, 16), _final_params(killed, 16), strict=True):
        np.testing.assert_array_equal(a, b)
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 16


def test_four_cpu_devices_match_one_device():
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from configs import glow_digits
        from flows import data as data_lib
        from flows.train import sharding
        from flows.train.setup import make_model_and_state
        from flows.train.objectives import density_loss
        from flows.train.optim import make_optimizer
        from flows.train.step import make_train_step

        assert len(jax.devices()) == 4, jax.devices()
        config = glow_digits.get_config("smoke")
        train = data_lib.load_datasets(config.data)["train"]
        idx = data_lib.batch_indices(train.num_examples, 16, 0, 0)
        batch = {"image": train.images[idx], "label": train.labels[idx]}
        results = []
        for devices in (jax.devices()[:1], jax.devices()):
            mesh = sharding.data_mesh(devices)
            tx = make_optimizer(config.optim, 10)
            b = sharding.shard_batch(batch, mesh)
            graphdef, state = make_model_and_state(
                config, train.image_shape, train.num_bins, train.num_classes, tx,
                b["image"], b["label"], mesh, None)
            step = jax.jit(make_train_step(graphdef, density_loss(train.num_bins), tx))
            state, m1 = step(state, b)
            state, m2 = step(state, b)
            results.append((float(m1["loss"]), float(m2["loss"]),
                            np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)])))
        (a1, a2, pa), (b1, b2, pb) = results
        np.testing.assert_allclose([a1, a2], [b1, b2], rtol=1e-5)
        np.testing.assert_allclose(pa, pb, rtol=1e-4, atol=1e-5)
        print("OK", a1, a2, b1, b2)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def _one_line_error(args, expected):
    out = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr[-3000:]
    assert expected in lines[0], lines[0]


def test_bad_config_key_is_one_line_error(tmp_path):
    _one_line_error(_train_cmd(tmp_path, "--config.model.num_stepz=3"), "num_stepz")


def test_unknown_dataset_is_one_line_error(tmp_path):
    _one_line_error(_train_cmd(tmp_path, "--config.data.name=nosuchdata"), "nosuchdata")


def test_corrupt_checkpoint_is_one_line_error(digits_run, tmp_path):
    import shutil

    workdir = tmp_path / "corrupt"
    shutil.copytree(digits_run[0], workdir)
    latest = max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    for root, _, files in os.walk(workdir / "checkpoints" / str(latest)):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    _one_line_error(_train_cmd(workdir), "unreadable")
