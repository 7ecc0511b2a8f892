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
    [[], ["--compute_dtype=bfloat16", "--remat_nets", "--only=train,sample"], ["--conv=lax"]],
)
def test_throughput_prints_its_record(extra, capsys, tmp_path, monkeypatch):
    import flows.nn.conditioners as conditioners

    # --conv=lax swaps the conditioners' convolution module-wide: restore it afterwards.
    monkeypatch.setattr(conditioners, "conv2d_same", conditioners.conv2d_same)
    throughput.main([*TINY, *extra, f"--out={tmp_path}"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    only = next((e.split("=")[1] for e in extra if e.startswith("--only=")), "train,eval,sample")
    for mode in only.split(","):
        assert record[f"{mode}_images_per_s"] > 0
    assert record["compile_s"] > 0 and record["peak_rss_mb"] > 0
    assert record["config"]["remat_coupling_nets"] == ("--remat_nets" in extra)
    (written,) = tmp_path.glob("jax_*.json")
    assert json.loads(written.read_text())["case"] == record["case"]
