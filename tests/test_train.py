"""End-to-end training on :smoke configs: files written, a catalog dataset under mock data,
4 forced CPU devices equal 1. Resume after SIGKILL: test_crash_resume.py; bad inputs:
test_bad_inputs.py; the workdir contract: test_workdir_contract.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

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
