"""flows.convert.ml_tarflow against apple/ml-tarflow's own outputs, without PyTorch.

The fixtures ``tests/fixtures/ml_tarflow_<case>.npz`` hold random ml-tarflow models (state
dicts) and what the reference code computed on them, in float32 and float64
(``scripts/fixtures_ml_tarflow.py`` says how they were made and how to regenerate them):
``cond`` (8x8x3, patch 2, 3 classes), ``uncond`` (8x8x1, patch 4, 3 blocks) and ``vp``
(volume-preserving, 2 classes). The converted model's log-density of ``x = (x' + 1) / 2``
must be the reference's of ``x'`` plus ``D log 2``, its latents the reference's (in our
layout), and its inverse of ``sqrt(var) * eps`` the reference's ``reverse(eps)`` (on the
reference's scale), with and without guidance; then the command line.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flows.convert import from_ml_tarflow
from flows.convert.ml_tarflow import (
    infer_architecture,
    latents_from_reference,
    load_checkpoint,
    noise_of_checkpoint_name,
    read_state_dict,
)
from flows.errors import CheckpointError, ConfigError
from flows.models.base import latent_log_prob
from tests.cli_checks import ROOT, assert_one_line_error, run_commands

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
CASES = ("cond", "uncond", "vp")
# Reverse-pass settings of the fixtures (Model.reverse's arguments) as TarFlow fields.
GUIDE_WHAT = {"ab": "both", "a": "log_scale", "b": "shift"}


def _path(case: str) -> str:
    return os.path.join(FIXTURES, f"ml_tarflow_{case}.npz")


@functools.cache
def fixture(case: str) -> dict:
    with np.load(_path(case)) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["meta"] = json.loads(str(arrays["meta"]))
    return arrays


def _state(case: str) -> dict:
    return {k[len("state/") :]: v for k, v in fixture(case).items() if k.startswith("state/")}


def _shape(case: str) -> tuple[int, int, int]:
    return tuple(fixture(case)["meta"]["image_shape"])


def _fields(setting: dict) -> dict:
    """TarFlow fields of one of ml-tarflow's reverse settings."""
    return {
        "guidance_schedule": "linear" if setting.get("annealed_guidance") else "constant",
        "guidance_on": GUIDE_WHAT[setting.get("guide_what", "ab")],
        "guidance_attention_temperature": float(setting.get("attn_temp", 1.0)),
    }


@functools.cache
def converted(case: str, dtype: str = "f32", **fields):
    f = fixture(case)
    model = from_ml_tarflow(
        _state(case),
        _shape(case),
        num_heads=f["meta"]["num_heads"],
        dtype=np.float64 if dtype == "f64" else None,
        **fields,
    )
    return model


def _inputs(case: str, dtype: str):
    """(x on the unit scale, labels or None) of the fixture, in the run's dtype."""
    f = fixture(case)
    x = (f["x"].transpose(0, 2, 3, 1).astype(np.float64) + 1) / 2
    x = jnp.asarray(x, jnp.float64 if dtype == "f64" else jnp.float32)
    return x, (jnp.asarray(f["y"]) if "y" in f else None)


@nnx.jit
def _latents_and_log_prob(model, x, context):
    """``(latents, log_prob)``: ``DensityModel.log_prob`` is ``latent_log_prob`` of the
    forward pass (one compiled program for both)."""
    z, log_det = model.forward_and_log_det(x, context=context)
    return z, latent_log_prob(z, log_det)


@functools.partial(nnx.jit, static_argnames="guidance")
def _reverse(model, latents, labels, guidance):
    if guidance:
        return model.guided_inverse(latents, context=labels, guidance=guidance)
    return model.inverse(latents, context=labels)


def _check_density(case: str, dtype: str, tol: float) -> None:
    f = fixture(case)
    model = converted(case, dtype)
    x, labels = _inputs(case, dtype)
    d = int(np.prod(_shape(case)))
    # Labels as one-hot class weights, so the null context's call reuses the program.
    context = None if labels is None else model.context_features(labels).astype(x.dtype)
    z, log_p = _latents_and_log_prob(model, x, context)
    np.testing.assert_allclose(
        np.asarray(z), latents_from_reference(f[f"{dtype}/z"], _shape(case)), atol=tol * 100
    )
    ref = f[f"{dtype}/log_p"] + d * np.log(2)
    per_dim = np.abs(np.asarray(log_p, np.float64) - ref) / d
    assert per_dim.max() <= tol, per_dim
    if labels is not None:  # the reference's y=None: the mean class embedding
        null = model.null_context(len(x)).astype(x.dtype)
        ref = f[f"{dtype}/log_p_null"] + d * np.log(2)
        per_dim = np.abs(np.asarray(_latents_and_log_prob(model, x, null)[1]) - ref) / d
        assert per_dim.max() <= tol, per_dim


def _check_reverse(case: str, dtype: str, name: str, tol: float) -> None:
    f = fixture(case)
    setting = f["meta"]["reverse"][name]
    model = converted(case, dtype, **_fields(setting))
    _, labels = _inputs(case, dtype)
    eps = latents_from_reference(f["eps"], _shape(case))
    latents = jnp.asarray(eps * np.sqrt(np.asarray(model.latent_variance[...], np.float64)))
    latents = latents.astype(jnp.float64 if dtype == "f64" else jnp.float32)
    if setting.get("unconditional"):
        labels = model.null_context(len(f["eps"])).astype(latents.dtype)
    x = _reverse(model, latents, labels, float(setting["guidance"]))
    ref = f[f"{dtype}/reverse/{name}"].transpose(0, 2, 3, 1)
    err = np.abs(2 * np.asarray(x, np.float64) - 1 - ref).max()
    assert err <= tol, (name, err)


# The reverse passes the quick suite checks (the rest are slow: a compile each): the
# unconditional model's, and guidance on the log-scale only, annealed, with an attention
# temperature on the null branch.
_QUICK = {("uncond", "plain"), ("cond", "guided_a_annealed_temp")}
_REVERSES = [
    pytest.param(c, n, marks=() if (c, n) in _QUICK else pytest.mark.slow)
    for c in CASES
    for n in fixture(c)["meta"]["reverse"]
]


@pytest.mark.parametrize("case", CASES)
def test_log_prob_and_latents_equal_the_reference_float32(case):
    _check_density(case, "f32", 1e-5)


@pytest.mark.parametrize("case, name", _REVERSES)
def test_reverse_passes_equal_the_reference_float32(case, name):
    """Plain, unconditional (mean embedding) and guided: 'ab' constant, 'a' annealed with
    attention temperature 0.5, 'b' with temperature 1.5."""
    _check_reverse(case, "f32", name, 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_float64_equals_the_reference_float64(case):
    with jax.enable_x64(True):
        _check_density(case, "f64", 1e-9)
        for name in fixture(case)["meta"]["reverse"]:
            _check_reverse(case, "f64", name, 1e-9)


@pytest.mark.parametrize("case", CASES)
def test_parameter_counts_and_architecture(case):
    f = fixture(case)
    model = converted(case)
    ours = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert ours == f["meta"]["num_parameters"]
    arch = infer_architecture(_state(case), _shape(case))
    reference = f["meta"]["case"]
    assert (arch["width"], arch["num_blocks"], arch["layers_per_block"]) == (
        reference["width"],
        reference["blocks"],
        reference["layers"],
    )
    assert arch["patch_size"] == reference["patch"] and arch["nvp"] == reference["nvp"]
    assert (arch["num_classes"] or 0) == reference["classes"]


def test_sampling_scales_the_latents_by_the_variance():
    model = converted("cond")
    var = np.asarray(model.latent_variance[...])
    assert var.std() > 0.1  # the fixture's var is far from one
    key = jax.random.key(3)
    expected = 0.7 * jax.random.normal(key, (2, *model.image_shape)) * np.sqrt(var)
    np.testing.assert_allclose(model.sample_latents(key, 2, 0.7), expected, rtol=1e-6)


def test_load_checkpoint_reads_npz_and_infers_noise_from_the_name():
    assert noise_of_checkpoint_name("afhq_model_8_768_8_8_0.07.pth") == pytest.approx(0.035)
    assert noise_of_checkpoint_name("imagenet64_model_2_768_8_8_uniform.pth") == 0.0
    assert noise_of_checkpoint_name("model.pth") is None
    model, config = load_checkpoint(_path("cond"), (8, 8, 3), num_heads=4)
    assert config["conditional"] and config["label_dropout"] == 0.1
    assert model.label_dropout == 0.1 and model.noise_sigma == 0.0
    assert model.null_label == "mean" and model.latent_variance is not None


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda sd: {"params": np.zeros(3)}, CheckpointError, "not a state dict of ml-tarflow"),
        (lambda sd: {k: v for k, v in sd.items() if k != "var"}, CheckpointError, "'var'"),
        (lambda sd: {**sd, "extra": np.zeros(2)}, CheckpointError, "unexpected 'extra'"),
        (
            lambda sd: {**sd, "blocks.1.pos_embed": np.zeros((3, 32))},
            CheckpointError,
            "'blocks.1.pos_embed' has shape",
        ),
        (lambda sd: [1, 2], CheckpointError, "not a mapping"),
    ],
)
def test_a_state_dict_of_another_model_is_refused(change, error, match):
    with pytest.raises(error, match=match) as info:
        from_ml_tarflow(change(_state("cond")), (8, 8, 3))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "shape, fields, match",
    [
        ((9, 9, 3), {}, "not divisible by the checkpoint's patch size 2"),
        ((8, 8, 1), {}, "not p\\*p\\*C"),
        ((16, 16, 3), {}, "16 tokens"),
        ((8, 8, 3), {"width": 64}, "model.width=64 contradicts the checkpoint"),
        ((8, 8, 3), {"num_heads": 5}, "not divisible by model.num_heads=5"),
        ((8, 8, 3), {"no_such_field": 1}, "no field"),
    ],
)
def test_bad_image_shape_or_field_is_one_line_config_error(shape, fields, match):
    with pytest.raises(ConfigError, match=match) as info:
        from_ml_tarflow(_state("cond"), shape, **fields)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(str(tmp_path / "missing.pth"))
    (tmp_path / "model.txt").write_text("x")
    with pytest.raises(CheckpointError, match="expected a .pth or .npz"):
        read_state_dict(str(tmp_path / "model.txt"))
    (tmp_path / "damaged.npz").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="cannot be read as .npz"):
        read_state_dict(str(tmp_path / "damaged.npz"))
    (tmp_path / "model.pth").write_bytes(b"\x80\x02")
    monkeypatch.setitem(sys.modules, "torch", None)  # as without the extra installed
    with pytest.raises(ConfigError, match=r"needs torch: pip install '\.\[convert\]'"):
        read_state_dict(str(tmp_path / "model.pth"))


@pytest.mark.slow
def test_the_command_line_writes_a_workdir_that_evaluate_and_sample_read(tmp_path):
    """uncond (8x8x1) as a digits model: evaluate, latents, compare; cond (8x8x3, 3
    classes): a guided class grid; bad inputs: one line, exit 2."""
    u, c = str(tmp_path / "u"), str(tmp_path / "c")
    convert = ["experiments.convert", "--source=ml-tarflow"]
    results = run_commands(
        [
            [*convert, f"--checkpoint={_path('uncond')}", "--image_shape=8,8,1",
             f"--workdir={u}", "--dataset=digits", "--num_bins=17", "--model_arg=num_heads=2"],
            ["experiments.evaluate", f"--workdir={u}", "--batch_size=300"],
            ["experiments.latents", f"--workdir={u}", "--pairs=1", "--steps=3"],
            ["experiments.compare", u, "--eval=eval_test_k1.json", "--markdown"],
            [*convert, f"--checkpoint={_path('cond')}", "--image_shape=8,8,3",
             f"--workdir={c}", "--model_arg=num_heads=4"],
            ["experiments.sample", f"--workdir={c}", "--class_grid", "--guidance=1",
             "--temperatures=1.0", "--per_temperature=1"],
            [*convert, f"--checkpoint={_path('cond')}", "--image_shape=9,9,3",
             f"--workdir={tmp_path / 'bad'}"],
            [*convert, f"--checkpoint={tmp_path / 'missing.npz'}", "--image_shape=8,8,3",
             f"--workdir={tmp_path / 'bad'}"],
            [*convert, f"--checkpoint={_path('cond')}", "--image_shape=8,8,3",
             f"--workdir={c}"],
            [*convert, "--source=big-vision-jet", f"--checkpoint={_path('cond')}",
             "--image_shape=8,8,3", f"--workdir={tmp_path / 'jet'}"],
        ]
    )  # fmt: skip
    for r in results[:6]:
        assert r.returncode == 0, (r.args, r.stderr[-3000:])
    assert "bits/dim (digits:test, 300 examples, 17 levels" in results[1].stdout
    assert "round trip of digits:test" in results[2].stdout
    assert "tarflow p4 w16 3x1 h2" in results[3].stdout
    assert "guidance 1" in results[5].stdout
    record = json.loads((tmp_path / "u" / "converted_from.json").read_text())
    assert record["source"] == "ml-tarflow" and len(record["sha256"]) == 64
    assert record["num_parameters"] == fixture("uncond")["meta"]["num_parameters"]
    assert_one_line_error(results[6], "not divisible by the checkpoint's patch size 2")
    assert_one_line_error(results[7], "does not exist")
    assert_one_line_error(results[8], "exists and is not empty")
    if not os.path.exists(os.path.join(ROOT, "flows", "convert", "big_vision_jet.py")):
        assert_one_line_error(results[9], "flows.convert.big_vision_jet is not in this checkout")
    assert not (tmp_path / "bad").exists()
