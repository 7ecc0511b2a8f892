"""Multi-host training, tested on one machine: two processes joined by ``jax.distributed``
(coordinator on 127.0.0.1, CPU collectives over gloo, jax's default on CPU), each with two
forced CPU devices, train ``configs/glow_digits.py:smoke`` through ``train_and_evaluate`` (a
first session, then a resume with more steps and ``allow_config_change``; validation,
checkpoints, a periodic and the final sample grid, test evaluation). A single process with
four devices runs the same two sessions. Checked:

1. the final parameters (raw and EMA) equal the single-process run's, and so do the
   validation and test records;
2. each process reads from the train split only its half of every global batch (and of
   the initialisation batch); only process 0 writes the run's files: every process records
   the files it opens for writing (and renames, makes, removes) with an audit hook
   (``sys.addaudithook``), and process 1 wrote nothing in the workdir but what orbax's
   multi-process protocol asks of it; process 1 prints no progress bar and no result line;
3. evaluation is sharded over the mesh: the per-example bits/dim on four devices equal a
   one-device evaluation, and each device's compiled program does a quarter of the work;
4. in one process, two training steps on four devices equal them on one (losses within
   1e-5 relative, parameters within 1e-4 |b| + 1e-5).

Multi-host for real. Every host runs the same command with
``--config.train.distributed.enabled=True`` and, where JAX cannot detect the cluster
(TPU pods, SLURM, Open MPI and Kubernetes it can), ``--config.train.distributed.
coordinator_address=HOST0:PORT`` (process 0's address; the same on every host),
``--config.train.distributed.num_processes=N`` and ``--config.train.distributed.process_id=i``
(0 .. N-1, distinct). ``--workdir`` must be one shared directory (every host reads the data
and the checkpoints; orbax writes checkpoints from every host); ``train.batch_size`` and
``eval.batch_size`` are global. On CPU hosts JAX's collectives go over gloo (TCP); GPU and
TPU hosts use their own interconnect. Process 0 writes the records and pictures and prints.

Run: ``python scripts/check_distributed.py`` (three JAX processes), or as
``tests/test_distributed.py`` in the suite. Prints ``OK`` and exits 0, or fails with the
assertion that did not hold. The worker is this file run as a script
(``python scripts/check_distributed.py worker ...``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = (4, 8)  # the first session's steps, then the resumed session's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env(num_devices: int, cache_dir) -> dict:
    flags = os.environ.get("XLA_FLAGS", "")
    flags += f" --xla_force_host_platform_device_count={num_devices}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", XLA_FLAGS=flags)
    # The resumed session (and the reference's re-evaluations) compile nothing new.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _worker_cmd(*args) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "worker", *map(str, args)]


def check_two_processes_train_like_one(tmp_path):
    port = _free_port()
    dist_dir, ref_dir = tmp_path / "dist", tmp_path / "ref"
    procs = [
        subprocess.Popen(
            _worker_cmd("dist", pid, port, dist_dir, tmp_path / f"dist{pid}.json"),
            cwd=ROOT,
            env=_worker_env(2, tmp_path / "jax-cache"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, f"stdout:\n{out[-2000:]}\nstderr:\n{err[-4000:]}"
    ref = subprocess.run(
        _worker_cmd("ref", 0, 0, ref_dir, tmp_path / "ref.json", dist_dir),
        cwd=ROOT,
        env=_worker_env(4, tmp_path / "jax-cache"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr[-4000:]
    dist = [json.loads((tmp_path / f"dist{pid}.json").read_text()) for pid in (0, 1)]
    reference = json.loads((tmp_path / "ref.json").read_text())

    # 1. The same training: parameters (compared in the reference worker), records.
    assert reference["params_max_rel_diff"] < 1e-5, reference
    for d in dist:
        np.testing.assert_allclose(
            d["records"][-1]["bits_per_dim"], reference["records"][-1]["bits_per_dim"], rtol=1e-5
        )
    metrics = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").open()]
    for a, b in zip(metrics(dist_dir), metrics(ref_dir), strict=True):
        assert a["step"] == b["step"]
        for field in ("train_bpd", "val_bpd"):
            if field in b:
                np.testing.assert_allclose(a[field], b[field], rtol=1e-5)

    # 2. Process 0 writes the run's files. Process 1 may touch the workdir itself ('.':
    # setup's os.makedirs and its writable-directory probe, an anonymous O_TMPFILE) and
    # write what orbax's multi-process save asks of every process (its array metadata).
    by_main = {path for event, path in dist[0]["writes"] if event in ("open", "os.rename")}
    for event, path in dist[1]["writes"]:
        orbax = path.split(os.sep)[0] in ("checkpoints", "best") and "process_1" in path
        assert path == "." or orbax, (event, path)
    for dirpath, _, files in os.walk(dist_dir):
        rel = os.path.relpath(dirpath, dist_dir)
        if rel.split(os.sep)[0] in ("checkpoints", "best"):
            continue  # orbax's files (tensorstore writes them from C++, unseen by the hook)
        for name in files:
            assert os.path.normpath(os.path.join(rel, name)) in by_main, (rel, name)
    out1, err1 = outs[1]
    # gloo's C++ library prints its connection lines ("[Gloo] Rank 1 is connected to ...").
    printed = [line for line in out1.splitlines() if line.strip() and "peer ranks" not in line]
    assert printed == [] and "train:" not in err1, "\n".join(printed) + err1[-2000:]

    # Each process reads only its half of every training batch from the train split.
    for pid, d in enumerate(dist):
        train, expected = _expected_train_reads(pid)
        train_reads = {tuple(idx) for name, idx in d["reads"] if name == train}
        assert train_reads == expected, (pid, sorted(train_reads)[:3])

    # 3. Sharded evaluation (checked in the reference worker, on 4 devices).
    assert reference["eval_max_rel_diff"] < 1e-5, reference
    assert reference["flops_ratio"] < 0.3, reference

    # 4. One process: two training steps on one device and on four agree.
    one, four = reference["one_vs_four_losses"]
    np.testing.assert_allclose(four, one, rtol=1e-5)
    assert reference["one_vs_four_params_close"], reference


# ----------------------------------------------------------------------------- the worker


def _audit_writes(root: str) -> list:
    """Starts recording ``(event, path)`` for every file under ``root`` this process opens
    for writing, renames to, makes or removes; returns the (growing) list."""
    root = os.path.realpath(root)
    writes = []
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    path_events = {"os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"}

    def note(event, path):
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, str | os.PathLike):
            path = os.path.realpath(os.path.abspath(path))
            if path == root or path.startswith(root + os.sep):
                writes.append((event, os.path.relpath(path, root)))

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & write_flags
            ):
                note(event, path)
        elif event == "os.rename":
            note(event, args[1])
        elif event in path_events:
            note(event, args[0])

    sys.addaudithook(hook)
    return writes


def _record_reads() -> list:
    """Starts recording ``(split name, [indices])`` of every read of a streamed split (from
    any thread: the input pipeline's readers); returns the (growing) list."""
    from flows.data.source import StreamedSplit

    reads, read = [], StreamedSplit.read

    def recorded(self, indices):
        reads.append((self.name, [int(i) for i in np.ravel(indices)]))
        return read(self, indices)

    StreamedSplit.read = recorded
    return reads


def _expected_train_reads(process_id: int) -> set:
    """``(train split name, rows)``: the rows of the train split process ``process_id`` of 2
    must read: its half of every global batch of both sessions and of the initialisation
    batch, nothing else."""
    sys.path.insert(0, ROOT)
    from configs import glow_digits
    from flows import data as data_lib

    config = glow_digits.get_config("smoke")
    tc = config.train
    train = data_lib.load_datasets(config.data, stream=True)["train"]
    n = train.num_examples

    def half(batch_size, seed, step):
        idx = data_lib.batch_indices(n, batch_size, seed, step)
        return tuple(int(i) for i in np.split(idx, 2)[process_id])

    rows = {half(tc.batch_size, tc.seed, step) for step in range(STEPS[-1])}
    return train.name, rows | {half(tc.init_batch_size, tc.seed + 1, 0)}


def _worker(mode, process_id, port, workdir, out_path, compare_with=None):
    os.makedirs(workdir, exist_ok=True)
    writes = _audit_writes(workdir)

    from configs import glow_digits
    from flows.train.loop import train_and_evaluate

    reads = _record_reads()
    records, cpu = [], [time.process_time()]
    for session, steps in enumerate(STEPS):
        config = glow_digits.get_config("smoke")
        with config.unlocked():
            config.train.num_train_steps = steps
            config.train.log_every = 2
            config.train.eval_every = 4
            config.train.checkpoint_every = 4
            config.train.sample_every = 4
            # No decay: the schedule (so the compiled step) does not depend on the number
            # of steps, and the resumed session reuses every compiled program.
            config.optim.schedule = "constant"
            if mode == "dist":
                d = config.train.distributed
                d.enabled, d.num_processes, d.process_id = True, 2, int(process_id)
                d.coordinator_address = f"127.0.0.1:{port}"
        records.append(train_and_evaluate(config, workdir, allow_config_change=session > 0))
        cpu.append(time.process_time())
    result = {"records": records, "writes": writes, "reads": reads, "cpu_s": cpu}
    if mode == "ref":
        result.update(_reference_checks(workdir, compare_with))
        result["cpu_s"].append(time.process_time())
    with open(out_path, "w") as f:
        json.dump(result, f, default=str)


def _max_rel_diff(a, b, atol=0.0) -> float:
    """max |a - b| / (|b| + atol) over every element of two pytrees."""
    import jax

    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)) / (np.abs(np.asarray(y)) + atol)))
        for x, y in leaves
    )


def _reference_checks(ref_dir, dist_dir) -> dict:
    """Runs in the 4-device reference process after its training."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from flows import evaluation
    from flows import workdir as wd
    from flows.data import load_datasets
    from flows.models import build_model
    from flows.train.checkpoint import Checkpointer, abstract_like
    from flows.train.optim import run_optimizer
    from flows.train.state import TrainState

    config, info = wd.load_config(ref_dir), wd.load_data_info(ref_dir)
    model = build_model(config.model, info["image_shape"], info["num_classes"], rngs=nnx.Rngs(0))
    template = TrainState.create(model, run_optimizer(config), jax.random.key(0), ema=True)
    abstract = abstract_like(template, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    states = []
    for workdir in (ref_dir, dist_dir):
        ckpt = Checkpointer(wd.path(workdir, wd.CHECKPOINTS))
        states.append(ckpt.restore(abstract)[0])
        ckpt.close()
    ref, dist = states
    assert int(ref.step) == int(dist.step) == STEPS[-1]
    # The whole state: parameters, EMA, optimizer moments. assert_allclose(rtol=1e-5,
    # atol=1e-6) is |a - b| <= 1e-5 * (|b| + 0.1).
    floating = lambda s: [x for x in jax.tree.leaves(s) if jnp.issubdtype(x.dtype, jnp.floating)]
    params_diff = _max_rel_diff(floating(dist), floating(ref), 0.1)
    model = ref.model(nnx.graphdef(model), use_ema=True)

    # Sharded evaluation on the 4 devices vs one device.
    assert len(jax.devices()) == 4
    test = load_datasets(config.data)["test"]
    kwargs = dict(batch_size=config.eval.batch_size, key=jax.random.key(7))
    sharded = evaluation.per_example_bits_per_dim(model, test, **kwargs)
    flops = [_eval_flops(evaluation, model, test)]
    all_devices = evaluation.eval_devices
    evaluation.eval_devices = lambda: all_devices()[:1]
    try:
        single = evaluation.per_example_bits_per_dim(model, test, **kwargs)
        flops.append(_eval_flops(evaluation, model, test))
    finally:
        evaluation.eval_devices = all_devices
    return {
        "params_max_rel_diff": params_diff,
        "eval_max_rel_diff": _max_rel_diff(sharded, single),
        "flops_ratio": flops[0] / flops[1],
        **_one_device_and_four(),
    }


def _one_device_and_four() -> dict:
    """Two training steps of ``glow_digits:smoke`` (no EMA) on one device and on all four,
    from the same initialisation and global batch: their losses and parameters."""
    import jax

    from configs import glow_digits
    from flows import data as data_lib
    from flows import sharding
    from flows.train.objectives import density_loss
    from flows.train.optim import make_optimizer
    from flows.train.setup import make_model_and_state
    from flows.train.step import make_train_step

    config = glow_digits.get_config("smoke")
    train = data_lib.load_datasets(config.data)["train"]
    idx = data_lib.batch_indices(train.num_examples, 16, 0, 0)
    batch = {"image": train.images[idx], "label": train.labels[idx]}
    losses, params = [], []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.data_mesh(devices)
        tx = make_optimizer(config.optim, 10)
        b = sharding.shard_batch(batch, mesh)
        graphdef, state = make_model_and_state(
            config, train.image_shape, train.num_bins, train.num_classes, tx,
            b["image"], b["label"], mesh, None,
        )  # fmt: skip
        step = jax.jit(make_train_step(graphdef, density_loss(train.num_bins), tx))
        state, m1 = step(state, b)
        state, m2 = step(state, b)
        losses.append([float(m1["loss"]), float(m2["loss"])])
        params.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)]))
    return {
        "one_vs_four_losses": losses,
        # |a - b| <= 1e-4 |b| + 1e-5 (the reductions run in another order on four devices)
        "one_vs_four_params_close": bool(np.allclose(params[1], params[0], 1e-4, 1e-5)),
    }


def _eval_flops(evaluation, model, data) -> float:
    """The compiled per-device FLOPs of one evaluation batch of 148 examples."""
    import math

    import jax
    from flax import nnx

    from flows import sharding

    graphdef, state = nnx.split(model)
    mesh = evaluation.eval_mesh()
    fn = evaluation.batch_bits_per_dim_fn(
        graphdef, math.prod(data.image_shape), data.num_bins, 1, False, mesh
    )
    _, _, images, labels, indices = next(evaluation.read_batches(data, 148, mesh))
    state, key = sharding.replicate((state, jax.random.key(0)), mesh)
    cost = fn.lower(state, images, labels, indices, key).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        _worker(*sys.argv[2:])
    else:
        import pathlib
        import tempfile

        check_two_processes_train_like_one(pathlib.Path(tempfile.mkdtemp(prefix="distributed-")))
        print("OK: two processes x two devices trained like one process x four devices")
