"""Four forced CPU devices train and evaluate like one (two processes with two devices
each: scripts/check_distributed.py). Training end to end: test_user_paths.py (every
config's :smoke and every CLI), test_crash_resume.py (SIGKILL and resume),
test_bad_inputs.py, test_workdir_contract.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


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

        # Evaluation sharded over the 4 devices (each its own slice) equals one device's.
        from flows import evaluation
        model = state.model(graphdef, use_ema=False)
        test = data_lib.load_datasets(config.data)["test"]
        kw = dict(batch_size=30, key=jax.random.key(5))
        on_four = evaluation.per_example_bits_per_dim(model, test, **kw)
        evaluation.eval_devices = lambda: jax.devices()[:1]
        on_one = evaluation.per_example_bits_per_dim(model, test, **kw)
        np.testing.assert_allclose(on_four, on_one, rtol=1e-5)
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
