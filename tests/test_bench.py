"""The benchmark scripts run and print the record README's tables are built from (tiny
models; speed itself is measured by running bench/, never asserted in tests)."""

from __future__ import annotations

import json

import pytest

from bench import throughput

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


@pytest.mark.parametrize(
    "extra",
    [
        ["--compute_dtype=auto"],
        ["--compute_dtype=bfloat16", "--remat_nets", "--only=train,sample"],
        ["--conv_impl=lax", "--only=train"],
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
    (written,) = tmp_path.glob("jax_*.json")
    assert json.loads(written.read_text())["case"] == record["case"]
