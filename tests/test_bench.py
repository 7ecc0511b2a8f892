"""The benchmark scripts run and print the record README's tables are built from (tiny
models; speed itself is measured by running bench/, never asserted in tests)."""

from __future__ import annotations

import json

import pytest

from bench import input_pipeline, throughput

TINY = [
    "--image_shape=8,8,1",
    "--num_levels=1",
    "--num_steps=2",
    "--hidden_channels=8",
    "--batch_size=4",
    "--warmup=1",
    "--iters=2",
    "--repeats=1",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        ["--compute_dtype=auto"],
        ["--compute_dtype=bfloat16", "--remat_nets", "--only=train,sample"],
        ["--conv_impl=lax", "--only=train", "--field=coupling=additive"],
    ],
)
def test_throughput_prints_its_record(extra, capsys, tmp_path):
    throughput.main([*TINY, *extra, f"--out={tmp_path}"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    only = next((e.split("=")[1] for e in extra if e.startswith("--only=")), "train,eval,sample")
    for mode in only.split(","):
        assert record[f"{mode}_images_per_s"] > 0
    assert record["compile_s"] > 0 and record["peak_rss_mb"] > 0
    config = record["config"]
    assert config["remat_coupling_nets"] == ("--remat_nets" in extra)
    # The kernels and dtype the model resolved, what was asked and why (flows.nn.backend).
    conv_asked = next((e.split("=")[1] for e in extra if e.startswith("--conv_impl=")), "auto")
    dtype_asked = next(
        (e.split("=")[1] for e in extra if e.startswith("--compute_dtype=")), "float32"
    )
    assert config["conv_impl_requested"] == conv_asked
    assert config["conv_impl"] == {"auto": "gemm", "lax": "lax"}[conv_asked]  # CPU tests
    assert config["compute_dtype_requested"] == dtype_asked
    assert config["compute_dtype"] in ("float32", "bfloat16")
    if dtype_asked != "auto":
        assert config["compute_dtype"] == dtype_asked
    assert config["compute_dtype_reason"].startswith(config["compute_dtype"] + ":")
    assert config["conv_impl_reason"].startswith(config["conv_impl"] + ":")
    fields = [e.split("=", 1)[1] for e in extra if e.startswith("--field=")]
    for key, value in (f.split("=") for f in fields):
        assert config["model"][key] == value
    (written,) = tmp_path.glob("jax_*.json")
    assert json.loads(written.read_text())["case"] == record["case"]


@pytest.mark.slow
def test_device_check_smoke_runs_end_to_end(tmp_path):
    """``python -m bench.device_check --smoke`` (as on a GPU machine, in a subprocess from the
    repository root, which is what puts ``bench`` on its path) prints and
    writes its record; on the CPU the CPU-vs-device comparison is trivially equal."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "device_check.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.device_check", "--smoke", f"--out={out}"],
        cwd=Path(__file__).resolve().parents[1],
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == record
    assert record["smoke"] and record["passed"] and record["errors"] == {}
    assert record["platform"]["backend"] == "cpu" and record["platform"]["jaxlib"]
    assert record["cpu_vs_device"].startswith("trivial")
    registry = record["registry"]
    assert registry["num_entries"] == registry["num_passed"] == 2
    for entry in registry["entries"]:
        assert entry["round_trip_max_abs_err"] <= registry["tolerances"]["round_trip_atol"]
        assert entry["passed"] and "cpu" in entry["on_device"].lower()
    glow = record["glow"]
    assert glow["train"]["steps"] == 2 and glow["train"]["nonfinite_steps"] == 0
    for when in ("at_init", "after_training"):
        check = glow[when]
        assert check["abs_delta_bits_per_dim"] == 0.0 and check["delta_within_target"]
        assert check["round_trip_max_abs_err"] < 1e-4 and check["finite"]
        assert 0 < check["device_bits_per_dim"] == check["cpu_bits_per_dim"]
    assert glow["after_training"]["device_bits_per_dim"] < glow["at_init"]["device_bits_per_dim"]
    tp = record["throughput"]
    assert tp["train_images_per_s"] > 0 and tp["eval_images_per_s"] > 0
    assert record["config"]["glow_kwargs_passed"] == {}  # nothing passed unless asked


def test_input_pipeline_prints_its_record(capsys, tmp_path):
    input_pipeline.main(["--dataset=digits", "--batches=3", f"--out={tmp_path}"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("decode", "pipeline", "cached"):
        assert record[f"{key}_images_per_s"] > 0
    assert record["labels_per_s"] > 0 and record["labels_decoded_per_s"] > 0
    assert record["image_shape"] == [8, 8, 1] and record["num_examples"] == 1347
    assert json.loads((tmp_path / "input_pipeline_digits.json").read_text()) == record


@pytest.mark.slow
def test_throughput_times_a_conditional_model_and_guided_sampling(capsys):
    """``--field conditional=True`` runs every step with labels, and ``--guidance`` adds the
    guided sampling rate (what ``bench.paired --conditional`` compares with ml-tarflow's)."""
    tiny = [a for a in TINY if not a.startswith(("--num_", "--hidden"))]
    fields = ["patch_size=4", "width=16", "num_blocks=2", "layers_per_block=1", "num_heads=1"]
    extra = [f"--field={f}" for f in (*fields, "conditional=True")]
    throughput.main([*tiny, "--model=tarflow", *extra, "--guidance=1.5"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("train", "eval", "sample", "sample_guided"):
        assert record[f"{key}_images_per_s"] > 0
    assert record["config"]["num_classes"] == 10 and record["config"]["guidance"] == 1.5
    assert record["config"]["model_description"].endswith(" cond")
    assert record["config"]["compute_dtype"] == "float32"  # the field's default, resolved
    bf16 = "--field=compute_dtype=bfloat16"
    throughput.main([*tiny, "--model=tarflow", *extra[:-1], bf16, "--guidance=1.5"])
    unconditional = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "sample_guided_images_per_s" not in unconditional  # guidance needs labels
    config = unconditional["config"]
    assert (config["compute_dtype"], config["compute_dtype_requested"]) == ("bfloat16",) * 2
    assert config["compute_dtype_reason"] == "bfloat16: as configured"


@pytest.mark.slow
def test_op_profile_lists_the_operations_of_any_family(tmp_path):
    """``python -m bench.op_profile`` (it re-runs itself with XLA's trace flag, so a
    subprocess) profiles a TarFlow's sampling: the record names the family's case and
    lists operations with their times."""
    import os
    import subprocess
    import sys

    tiny = ["--image_shape=8,8,1", "--batch_size=2", "--model=tarflow"]
    fields = ["width=16", "num_blocks=2", "layers_per_block=1", "num_heads=1"]
    cmd = [sys.executable, "-m", "bench.op_profile", "--mode=sample", "--calls=1", "--top=2"]
    proc = subprocess.run(
        [*cmd, *tiny, *(f"--field={f}" for f in fields)],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=300,
        check=True,
    )
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["mode"] == "sample" and "tarflow" in record["case"]
    assert record["top"] and all(row["ms"] >= 0 for row in record["top"])


@pytest.mark.slow
def test_sampling_prints_its_record(capsys, tmp_path):
    """``bench.sampling`` on a tiny TarFlow: the three samplers timed, Jacobi's updates of
    each block, auto's choice and the Jacobi samples' distance to the sequential ones."""
    from bench import sampling

    tiny = ["--image_shape=8,8,1", "--field=patch_size=2", "--field=width=8"]
    tiny += ["--field=num_blocks=2", "--field=layers_per_block=1", "--field=num_heads=2"]
    sampling.main([*tiny, "--batch_sizes=1,2", "--rounds=1", f"--out={tmp_path}"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["num_tokens"] == 16 and record["backend"] == "cpu"
    assert [b["batch_size"] for b in record["results"]] == [1, 2]
    for b in record["results"]:
        assert all(b[f"{name}_s"] > 0 for name in ("sequential", "jacobi", "auto"))
        assert len(b["jacobi_updates"]) == 2 and all(1 <= n <= 16 for n in b["jacobi_updates"])
        assert len(b["auto_methods"]) == 2 and b["auto_reason"].startswith("auto on cpu")
        assert b["max_abs_diff_jacobi"] <= 1e-3
    (written,) = tmp_path.glob("tarflow_sampling_*.json")
    assert json.loads(written.read_text())["case"] == record["case"] == "8x8x1_p2_w8_2x1"
