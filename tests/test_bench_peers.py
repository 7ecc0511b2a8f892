"""The paired reference harnesses: what ``bench.paired`` runs on each side, how it reads the
runs back, the tables of its records, the shared timing code of the peer harnesses, and (slow,
where the references' venvs and checkouts exist) the harnesses themselves on tiny models."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import paired, peer_common, table
from flows.errors import ConfigError
from flows.models.registry import get_family

ROOT = Path(__file__).resolve().parents[1]


def _plan(*argv):
    return paired.plan(paired.parse_args(list(argv)))


def _flag(cmd, name):
    """The values of ``--name=value`` in a command."""
    return [a.split("=", 1)[1] for a in cmd if a.startswith(f"--{name}=")]


def test_tarflow_pairing_runs_both_sides_at_the_mnist_setting():
    case, cmds, settings = _plan("--peer=ml-tarflow", "--batch_size=64")
    assert case == "tarflow_p4_w128_4x4_h2_28x28x1_b64"
    assert set(cmds) == {"jax", "peer"}
    ours, theirs = cmds["jax"], cmds["peer"]
    assert ours[1:4] == ["-m", "bench.throughput", "--model=tarflow"]
    assert theirs[0] == paired.TORCH_PYTHON and theirs[1:3] == ["-m", "bench.tarflow_peer"]
    for cmd in (ours, theirs):
        assert _flag(cmd, "image_shape") == ["28,28,1"] and _flag(cmd, "batch_size") == ["64"]
        assert _flag(cmd, "iters") == ["8"]  # the same timing on both sides
    fields = dict(f.split("=", 1) for f in _flag(ours, "field"))
    assert fields.pop("compute_dtype") == "float32"  # --compute_dtype's default, ours alone
    same_model = paired.PEERS["ml-tarflow"].same_model  # ml-tarflow's architecture on our side
    assert same_model["final_norm"] is False and same_model["null_label"] == "mean"
    assert fields == {k: str(v) for k, v in {**settings, **same_model}.items()}
    for key, value in settings.items():  # the harness takes our field names as its flags
        assert _flag(theirs, key) == [str(value)]
    assert not any(_flag(theirs, key) for key in same_model)
    assert _flag(theirs, "threads") == [str(os.cpu_count())]


def test_settings_conditioning_and_our_fields_reach_the_right_side():
    case, cmds, _ = _plan(
        "--peer=ml-tarflow", "--set", "width=256", "--ours", "backprop=checkpoint",
        "--conditional", "--guidance=2", "--reference=/refs/tarflow",
    )  # fmt: skip
    ours, theirs = cmds["jax"], cmds["peer"]
    assert case == "tarflow_p4_w256_4x4_h2_cond_28x28x1_b64"
    assert "width=256" in _flag(ours, "field") and _flag(theirs, "width") == ["256"]
    assert "backprop=checkpoint" in _flag(ours, "field") and not _flag(theirs, "backprop")
    assert "conditional=True" in _flag(ours, "field") and _flag(ours, "guidance") == ["2.0"]
    assert _flag(theirs, "num_classes") == ["10"] and _flag(theirs, "guidance") == ["2.0"]
    assert _flag(theirs, "reference") == ["/refs/tarflow"]
    with pytest.raises(ConfigError, match="unconditional"):
        _plan("--peer=big-vision-jet", "--conditional")
    with pytest.raises(ConfigError, match="key=value"):
        _plan("--peer=ml-tarflow", "--set", "width")
    with pytest.raises(ConfigError, match="--peer must be one of"):
        _plan("--peer=nope")


def test_jet_pairing_and_the_peer_python():
    case, cmds, _ = _plan("--peer=big-vision-jet", "--peer_python=venv/bin/python")
    assert case == "jet_p2_8x1_w128_h4_ccccs_28x28x1_b64"
    theirs = cmds["peer"]
    assert theirs[0] == os.path.abspath("venv/bin/python")  # the peer runs from the root
    assert theirs[1:3] == ["-m", "bench.jet_peer"]
    assert _flag(theirs, "coupling_pattern") == ["channels,channels,channels,channels,spatial"]
    assert {"spatial_cut=True", "qkv_init=separate"} <= set(_flag(cmds["jax"], "field"))
    _, cmds, _ = _plan("--peer=big-vision-jet")
    assert cmds["peer"][0] == paired.BIG_VISION_PYTHON


def test_glow_pairing_keeps_its_case_names_and_flags():
    case, cmds, _ = _plan(
        "--image_shape=32,32,3", "--batch_size=32", "--set", "num_steps=32",
        "--backprop=invertible", "--compute_dtype=float32,bfloat16+remat",
    )  # fmt: skip
    assert case == "32x32x3_L3_K32_h128_b32"  # bench.throughput's and bench.torch_peer's name
    assert set(cmds) == {"jax", "jax_bfloat16_remat", "peer"}
    for side in ("jax", "jax_bfloat16_remat"):
        ours = cmds[side]
        assert _flag(ours, "num_steps") == ["32"] and _flag(ours, "backprop") == ["invertible"]
        assert not _flag(ours, "field")  # Glow's settings are throughput's own flags
    assert _flag(cmds["jax_bfloat16_remat"], "compute_dtype") == ["bfloat16"]
    assert "--remat_nets" in cmds["jax_bfloat16_remat"] and "--remat_nets" not in cmds["jax"]
    assert cmds["peer"][1:3] == ["-m", "bench.torch_peer"]
    assert not _flag(cmds["peer"], "backprop")


@pytest.mark.parametrize("model", ["tarflow", "jet"])
def test_compute_dtype_variants_of_the_transformer_families(model):
    peer = {"tarflow": "ml-tarflow", "jet": "big-vision-jet"}[model]
    with pytest.raises(ConfigError, match="Glow's alone"):
        _plan(f"--peer={peer}", "--compute_dtype=bfloat16+remat")
    has_field = "compute_dtype" in get_family(model).defaults
    _, cmds, _ = _plan(f"--peer={peer}", "--compute_dtype=float32,bfloat16", *(
        [] if has_field else ["--compute_dtype=float32"]
    ))  # fmt: skip
    if has_field:
        assert "compute_dtype=bfloat16" in _flag(cmds["jax_bfloat16"], "field")
        assert "compute_dtype=float32" in _flag(cmds["jax"], "field")
    else:  # a family without the field computes in float32, and nothing else is possible
        assert not any(f.startswith("compute_dtype") for f in _flag(cmds["jax"], "field"))
        with pytest.raises(ConfigError, match="only float32"):
            _plan(f"--peer={peer}", "--compute_dtype=bfloat16")


def test_environment_is_shared_by_both_sides():
    env = paired.environment(paired.parse_args(["--threads=1"]))
    assert paired.ONE_THREAD_XLA_FLAGS in env["XLA_FLAGS"]
    assert paired.HUGEPAGES in env["GLIBC_TUNABLES"]
    env = paired.environment(paired.parse_args(["--no-hugepages"]))
    assert paired.HUGEPAGES not in env.get("GLIBC_TUNABLES", "")
    if os.cpu_count() > 2:
        with pytest.raises(ConfigError, match="every core"):
            paired.environment(paired.parse_args(["--threads=2"]))


def test_a_side_with_bad_input_is_one_error_line_and_a_crash_keeps_its_stderr():
    bad = "import sys; print('error: no such flag', file=sys.stderr); sys.exit(2)"
    with pytest.raises(ConfigError, match="no such flag"):
        paired.run_side("peer", [sys.executable, "-c", bad], None)
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        paired.run_side("jax", [sys.executable, "-c", "1 / 0"], None)
    assert paired.run_side("jax", [sys.executable, "-c", "print(1); print('{\"a\": 2}')"], None)


def test_best_ratios_and_the_architecture_note():
    runs = {
        "jax": [{"train_images_per_s": 10.0, "sample_guided_images_per_s": 3.0}] * 2,
        "peer": [
            {"train_images_per_s": 4.0, "sample_guided_images_per_s": 2.0},
            {"train_images_per_s": 5.0, "sample_guided_images_per_s": 1.0},
        ],
    }
    runs["jax"] = [{**runs["jax"][0], "train_images_per_s": 9.0}, runs["jax"][1]]
    best, ratio = paired.summarize(runs)
    assert best["peer"] == {"train_images_per_s": 5.0, "sample_guided_images_per_s": 2.0}
    assert ratio == {"jax": {"train_images_per_s": 2.0, "sample_guided_images_per_s": 1.5}}
    assert paired.architecture_note({"jax": 5, "jax_bfloat16": 5, "peer": 5}, "x") is None
    note = paired.architecture_note({"jax": 1234, "peer": 1000}, "big-vision-jet")
    assert "ours 1,234" in note and "big-vision-jet 1,000" in note


def _paired_record(peer, case, ours, theirs, **extra):
    rates = lambda v: {k: v for k in paired.KEYS}  # noqa: E731
    return {
        "peer": peer,
        "case": case,
        "threads": 2,
        "best": {"jax": rates(ours), "peer": rates(theirs)},
        "ratio_over_peer": {"jax": rates(round(ours / theirs, 2))},
        **extra,
    }


def test_paired_tables_split_the_records_by_peer(tmp_path):
    legacy = {  # a record from before the peers were generalised
        "case": "32x32x1_L3_K8_h128_b64",
        "threads": 2,
        "best": {
            "jax": dict.fromkeys(paired.KEYS, 30.0),
            "torch": dict.fromkeys(paired.KEYS, 20.0),
        },
        "ratio_jax_over_torch": dict.fromkeys(paired.KEYS, 1.5),
    }
    records = {
        "jax_paired_32x32x1_L3_K8_h128_b64_t2.json": legacy,
        "jax_paired_tarflow_a_t2.json": _paired_record(
            "ml-tarflow", "tarflow_a", 300.0, 100.0, n_params={"jax": 7, "peer": 6},
            architecture_note="parameter counts differ",
        ),
        "jax_paired_jet_b_t2.json": _paired_record("big-vision-jet", "jet_b", 50.0, 100.0),
    }  # fmt: skip
    for name, record in records.items():
        (tmp_path / name).write_text(json.dumps(record))
    glow, glow_paths = table.glow_paired(str(tmp_path))
    assert [Path(p).name for p in glow_paths] == ["jax_paired_32x32x1_L3_K8_h128_b64_t2.json"]
    assert "**1.50x**" in glow and "normflows: train / eval / sample img/s" in glow
    assert "params" not in glow
    tarflow, paths = table.tarflow_paired(str(tmp_path))
    assert len(paths) == 1 and "**3.00x**" in tarflow and "| 7 / 6 |" in tarflow
    assert "tarflow_a: parameter counts differ." in tarflow
    jet, paths = table.jet_paired(str(tmp_path))
    assert len(paths) == 1 and "**0.50x**" in jet and "big_vision:" in jet
    text, paths = table.jet_paired(str(tmp_path / "none"))
    assert paths == [] and len(text.splitlines()) == 2  # scripts/docs.py: "No record yet."


def test_guided_sampling_gets_a_column_when_the_peer_measured_it(tmp_path):
    record = _paired_record("ml-tarflow", "tarflow_cond", 40.0, 20.0)
    for side in ("jax", "peer"):
        record["best"][side][paired.GUIDED] = 10.0 if side == "jax" else 2.0
    record["ratio_over_peer"]["jax"][paired.GUIDED] = 5.0
    (tmp_path / "jax_paired_tarflow_cond_t2.json").write_text(json.dumps(record))
    text, _ = table.tarflow_paired(str(tmp_path))
    assert "guided sample x" in text.splitlines()[0] and "**5.00x**" in text


# -- the peer harnesses' shared code ----------------------------------------------------------
class _Args:
    batch_size, warmup, iters, repeats, quiet_frac, max_s = 8, 2, 3, 2, None, 10.0


def test_measure_runs_warmup_then_blocks_of_iters():
    calls = []
    best, blocks, clean = peer_common.measure(lambda: calls.append(1), 8, 2, 3, 4)
    assert len(calls) == 2 + 3 * 4 and len(blocks) == clean == 4
    assert best == pytest.approx(max(b[0] for b in blocks), abs=0.01) and best > 0


def test_timings_skip_modes_not_asked_for():
    timings = peer_common.Timings(_Args, ["train", "sample"])
    ran = []
    for name in ("train", "eval", "sample", "sample_guided"):
        timings.run(name, lambda name=name: ran.append(name))
    assert set(ran) == {"train", "sample", "sample_guided"}
    fields = timings.fields()
    assert fields["eval_images_per_s"] is None and fields["eval_blocks"] == []
    assert fields["sample_guided_images_per_s"] > 0 and len(fields["train_blocks"]) == 2
    assert fields["clean_blocks"] == {"train": 2, "sample": 2, "sample_guided": 2}
    assert fields["timing"]["iters"] == 3


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(
    "harness, framework",
    [
        ("torch_peer", {"torch", "normflows"}),
        ("tarflow_peer", {"torch", "torch.utils.flop_counter", "transformer_flow"}),
        (
            "jet_peer",
            {"jax", "jax.numpy", "numpy", "optax", "flax", "flax.io", "tensorflow"}
            | {"big_vision.models.proj.jet"},
        ),
    ],
)
def test_harnesses_import_only_their_reference_and_the_standard_library(harness, framework):
    """They run in the references' venvs: no ``flows``, nothing of ``bench`` but its
    standard-library ``peer_common``."""
    stdlib = sys.stdlib_module_names
    common = _imports(ROOT / "bench" / "peer_common.py")
    assert {n for n in common if n.split(".")[0] not in stdlib} == set()
    own = _imports(ROOT / "bench" / f"{harness}.py") - {"bench", "bench.peer_common"}
    assert {n for n in own if n.split(".")[0] not in stdlib} <= framework


# -- the harnesses themselves, where their venvs and checkouts exist --------------------------
def _harness(python, module, *argv):
    proc = subprocess.run(
        [python, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


TINY_TIMING = ["--warmup=1", "--iters=1", "--repeats=1", "--batch_size=2", "--threads=1"]


@pytest.mark.slow
@pytest.mark.skipif(
    not (os.path.exists(paired.TORCH_PYTHON) and os.path.isdir("/work/refs/apple+ml-tarflow")),
    reason="needs the torch venv and an ml-tarflow checkout",
)
def test_tarflow_peer_runs_ml_tarflow_conditional_with_guidance():
    r = _harness(
        paired.TORCH_PYTHON, "bench.tarflow_peer", *TINY_TIMING, "--image_shape=8,8,1",
        "--width=64", "--num_heads=1", "--num_blocks=2", "--layers_per_block=1",
        "--num_classes=3",
    )  # fmt: skip
    assert r["peer"] == "ml-tarflow" and r["threads"] == 1
    for key in (*paired.KEYS, paired.GUIDED):
        assert r[key] > 0
    # proj_in 16->64, pos_embed 4x64, a layer (2 norms, qkv, proj, 2 MLP), proj_out 64->32,
    # class_embed 3x64, per block.
    layer = 2 * 128 + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64)
    block = (16 * 64 + 64) + 4 * 64 + layer + (64 * 32 + 32) + 3 * 64
    assert r["config"]["n_params"] == 2 * block
    assert r["torch_train_gflop_per_step"] > 0


@pytest.mark.slow
@pytest.mark.skipif(
    not (
        os.path.exists(paired.BIG_VISION_PYTHON)
        and os.path.isdir("/work/refs/google-research+big_vision")
    ),
    reason="needs the big_vision venv and checkout",
)
def test_jet_peer_runs_big_visions_jet():
    r = _harness(
        paired.BIG_VISION_PYTHON, "bench.jet_peer", *TINY_TIMING, "--image_shape=8,8,1",
        "--num_couplings=2", "--width=32", "--num_heads=2", "--coupling_pattern=channels,spatial",
    )  # fmt: skip
    assert r["peer"] == "big-vision-jet" and r["case"].endswith("_cs_b2")
    for key in paired.KEYS:
        assert r[key] > 0
    assert r["config"]["n_params"] > 0 and r["compile_s"] > 0
    assert paired.ONE_THREAD_XLA_FLAGS in r["xla_flags"]
    # Uniform bytes on [-1, 1] under the identity flow: about 8.5 bits/dim at the start.
    assert 7 < r["first_loss_bits_per_dim"] < 10
