"""big_vision's Jet converted (flows.convert.big_vision_jet) against the reference's own outputs.

The fixtures ``tests/fixtures/big_vision_jet_*.npz`` were made by big_vision's code with
random parameters (``scripts/fixtures_big_vision_jet.py`` says how to regenerate them); the
suite needs neither big_vision nor its dependencies. Each fixture file is also a big_vision
``.npz`` checkpoint (its parameters under ``params/``), which ``load_checkpoint`` reads.
"""

from __future__ import annotations

import json
import math
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flows.bijectors import Buffer
from flows.convert import from_big_vision_jet
from flows.convert.big_vision_jet import (
    SPATIAL_MASKS,
    jet_fields,
    latents_from_big_vision,
    latents_to_big_vision,
    load_checkpoint,
    read_params,
)
from flows.errors import ConfigError
from flows.likelihood import bits_per_dim
from flows.models.jet import Jet
from flows.nn.transformer import side_by_side_init

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SIZES = ("small", "wide")


def _path(size):
    return os.path.join(FIXTURES, f"big_vision_jet_{size}.npz")


class Fixture:
    def __init__(self, size):
        self.size = size
        with np.load(_path(size)) as f:
            self.arrays = {k.removeprefix("fixture/"): f[k] for k in f.files if "fixture/" in k}
            self.params = read_params(_path(size))
        self.kwargs = json.loads(str(self.arrays["model_kwargs"]))
        self.image_shape = tuple(int(v) for v in self.arrays["image_shape"])
        self.num_dims = math.prod(self.image_shape)

    def __getitem__(self, key):
        return self.arrays[key]


@nnx.jit
def _passes(model, x, z_ref):
    """(log p(x), our latents, inverse of the reference's latents, its log-det)."""
    z, log_det = model.forward_and_log_det(x)
    x_rev, rev_log_det = model.inverse_and_log_det(latents_from_big_vision(model, z_ref))
    log_p = model.log_prob(x)
    return log_p, z, x_rev, rev_log_det


@pytest.fixture(scope="module", params=SIZES)
def converted(request):
    """(fixture, model, our passes in float32) per size: one conversion and one compile."""
    fx = Fixture(request.param)
    model = from_big_vision_jet(fx.params, fx.image_shape, **fx.kwargs)
    outputs = _passes(model, jnp.asarray(fx["x"]), jnp.asarray(fx["z_fixed"]))
    return fx, model, [np.asarray(a) for a in outputs]


def test_log_prob_equals_the_reference_density_by_the_change_of_variables(converted):
    fx, model, (log_p, z, _, _) = converted
    # Unit scale: log p(x) = log p_ref(2x - 1) + D log 2, for every example.
    expected = fx["log_p"].astype(np.float64) + fx.num_dims * math.log(2)
    assert log_p.dtype == np.float32
    np.testing.assert_array_less(np.abs(log_p - expected) / fx.num_dims, 1e-5)
    # The latents are the reference's, in its image layout.
    assert np.abs(np.asarray(latents_to_big_vision(model, z)) - fx["latents"]).max() <= 1e-4


def test_inverse_equals_the_reference_reverse_pass(converted):
    fx, _, (_, _, x_rev, rev_log_det) = converted
    assert np.abs((2 * x_rev - 1) - fx["reverse"]).max() <= 1e-4  # the reference's scale
    # Our inverse's log-det is d x / d z on the unit scale: the reference's less D log 2.
    expected = fx["reverse_log_det"] - fx.num_dims * math.log(2)
    np.testing.assert_array_less(np.abs(rev_log_det - expected) / fx.num_dims, 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES)
def test_float64_equals_the_float64_reference(size):
    fx = Fixture(size)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: np.asarray(a, np.float64), fx.params)
        model = from_big_vision_jet(params, fx.image_shape, **fx.kwargs)
        x = jnp.asarray(fx["x"], jnp.float64)
        z = jnp.asarray(fx["z_fixed"], jnp.float64)
        log_p, _, x_rev, _ = (np.asarray(a) for a in _passes(model, x, z))
    assert log_p.dtype == np.float64
    expected = fx["log_p_f64"] + fx.num_dims * math.log(2)
    np.testing.assert_array_less(np.abs(log_p - expected) / fx.num_dims, 1e-9)
    assert np.abs((2 * x_rev - 1) - fx["reverse_f64"]).max() <= 1e-9


def test_input_scale_gives_big_vision_bits_per_dim():
    """big_vision's 8-bit pipeline: x' = (v + u) / 127.5 - 1 and (-log p' + D log 127.5) /
    (D log 2). With input_scale = 512/255 our x = (v + u) / 256 maps onto the same x', and
    our bits/dim with K = 256 is the reference's number."""
    fx = Fixture("small")
    model = from_big_vision_jet(fx.params, fx.image_shape, input_scale=512 / 255, **fx.kwargs)
    x_ref = 2 * fx["x"].astype(np.float64) - 1  # what the reference saw
    ours = (x_ref + 1) / (512 / 255)  # (v + u) / 256 for (v + u) = 127.5 (x_ref + 1)
    log_p = nnx.jit(lambda m, x: m.log_prob(x))(model, jnp.asarray(ours, jnp.float32))
    bits = np.asarray(bits_per_dim(log_p, fx.num_dims, 256))
    reference = (-fx["log_p"] + fx.num_dims * math.log(127.5)) / (fx.num_dims * math.log(2))
    np.testing.assert_allclose(bits, reference, atol=1e-5)


# -- parameter counts --------------------------------------------------------------------------


def _count(image_shape, fields):
    model = nnx.eval_shape(lambda: Jet(tuple(image_shape), **fields, rngs=nnx.Rngs(0)))
    params = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    buffers = sum(v.size for v in jax.tree.leaves(nnx.state(model, Buffer)))
    return params, buffers


def _reference_count_check(image_shape, kwargs, num_params, num_frozen):
    fields = jet_fields(**kwargs)
    params, _ = _count(image_shape, fields)
    assert params == num_params - num_frozen  # everything but the frozen projections
    # The reference keeps both a d x d and a T x T matrix for every coupling.
    h, w, c = image_shape
    p = fields["patch_size"]
    tokens, features = (h // p) * (w // p), p * p * c
    assert num_frozen == fields["num_couplings"] * (features**2 + tokens**2)


@pytest.mark.parametrize("size", SIZES)
def test_parameter_counts_equal_the_references(size):
    fx = Fixture(size)
    _reference_count_check(fx.image_shape, fx.kwargs, int(fx["num_params"]), int(fx["num_frozen"]))


def _counts():
    with open(os.path.join(FIXTURES, "big_vision_jet_counts.json")) as f:
        return json.load(f)


def test_parameter_count_at_the_mnist_setting():
    """Patch 2, 8 couplings of depth 1, width 128, 4 heads, ccccs on 28x28x1: big_vision has
    2,103,584 parameters of which 307,456 are frozen projections. Our Jet with its spatial
    couplings' networks cut (big_vision's) has the rest; without, 11,772 fewer."""
    (setting,) = [s for s in _counts() if s["image_shape"] == [28, 28, 1]]
    assert (setting["num_params"], setting["num_frozen"]) == (2_103_584, 307_456)
    _reference_count_check((28, 28, 1), setting["model"], 2_103_584, 307_456)
    ours = {**jet_fields(**setting["model"]), "spatial_cut": False}
    assert _count((28, 28, 1), ours)[0] == 2_103_584 - 307_456 - 11_772


@pytest.mark.slow
def test_parameter_counts_at_big_visions_imagenet64_settings():
    settings = [s for s in _counts() if s["image_shape"] == [64, 64, 3]]
    assert len(settings) == 2
    for s in settings:
        shape, kwargs = tuple(s["image_shape"]), s["model"]
        _reference_count_check(shape, kwargs, s["num_params"], s["num_frozen"])


# -- checkpoints and arguments ----------------------------------------------------------------


def test_load_checkpoint_reads_an_npz_and_returns_a_config_that_rebuilds_it(converted):
    fx, model, (log_p, *_) = converted
    loaded, config = load_checkpoint(_path(fx.size), fx.image_shape, **fx.kwargs)
    assert config["name"] == "jet" and config["spatial_cut"] and not config["conditional"]
    assert config["num_couplings"] == fx.kwargs["depth"]
    fields = {k: v for k, v in config.items() if k not in ("name", "conditional")}
    rebuilt = nnx.eval_shape(lambda: Jet(fx.image_shape, **fields, rngs=nnx.Rngs(1)))

    def shapes(m):
        return [(p, v.shape) for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(m))]

    assert shapes(rebuilt) == shapes(loaded)
    same = jax.tree.map(np.array_equal, nnx.state(loaded), nnx.state(model))
    assert all(jax.tree.leaves(same))


def test_arguments_as_text_and_inferred():
    """A CLI's ``key=value`` strings, or no arguments at all but scale_factor (the one the
    parameters cannot tell), give the same model."""
    fx = Fixture("small")
    text = {
        "depth": "5",
        "kinds": "channels,channels,spatial",
        "spatial_coupling_projs": "('checkerboard', 'hstripes-inv')",
        "scale_factor": "1.5",
    }
    _, from_text = load_checkpoint(_path("small"), fx.image_shape, **text)
    _, inferred = load_checkpoint(_path("small"), fx.image_shape, scale_factor=1.5)
    _, given = load_checkpoint(_path("small"), fx.image_shape, **fx.kwargs)
    assert from_text == given
    assert {**inferred, "spatial_splits": given["spatial_splits"]} == given


def test_tensorstore_checkpoint_directory(tmp_path):
    """The layout big_vision's trainer writes: one zarr array per leaf, '~' for '/', and a
    ``-LAST`` file naming the latest step."""
    from jax.experimental.array_serialization import serialization

    with np.load(_path("small")) as f:
        names = [k for k in f.files if k.startswith("params/")]
        arrays = [jnp.asarray(f[k]) for k in names]
    root = tmp_path / "checkpoint.bv"
    step = f"{root}-000000100"
    manager = serialization.GlobalAsyncCheckpointManager()
    manager.serialize_with_paths(arrays, [os.path.join(step, k.replace("/", "~")) for k in names])
    manager.wait_until_finished()
    (tmp_path / "checkpoint.bv-LAST").write_text("000000100")
    expected = read_params(_path("small"))
    for where in (str(root), step):
        got = read_params(where)
        same = jax.tree.map(lambda a, b: np.array_equal(a, b), got, expected)
        assert all(jax.tree.leaves(same))


def _small():
    fx = Fixture("small")
    return fx, jax.tree.map(np.copy, fx.params)


def _other_model(p):
    return {"head": {"kernel": np.zeros((3, 3))}}


def _no_positions(p):
    del p["couplings"]["dnn"]["posemb"]
    return p


def _conditional(p):
    p["couplings"]["dnn"]["MultiHeadDotProductAttention_0"] = {}
    return p


def _not_a_permutation(p):
    p[SPATIAL_MASKS][2, 0, 0] = 2.0  # coupling 2 is the spatial one
    return p


def _two_projections(p):
    p[SPATIAL_MASKS][0] = 1.0  # coupling 0 is a channel coupling
    return p


@pytest.mark.parametrize(
    "change, message",
    [
        (_other_model, "not a big_vision Jet"),
        (_no_positions, "couplings/dnn/posemb"),
        (_conditional, "conditional"),
        (_not_a_permutation, "not a permutation"),
        (_two_projections, "non-zero projections"),
    ],
)
def test_params_of_another_model(change, message):
    fx, params = _small()
    with pytest.raises(ConfigError, match=message):
        from_big_vision_jet(change(params), fx.image_shape, **fx.kwargs)


@pytest.mark.parametrize(
    "image_shape, kwargs, message",
    [
        ((9, 9, 2), {}, "patch size 2 does not divide the image size 9x9"),
        ((8, 8, 3), {}, "do not fit an image of 3 channels"),
        ((12, 12, 2), {}, "made for another shape"),
        ((8, 16, 2), {}, "square images"),
        ((8, 8), {}, "image_shape must be"),
        ((8, 8, 2), {"depth": 6}, "depth=6 but the parameters have depth=5"),
        ((8, 8, 2), {"ps": 4}, "ps=4"),
        ((8, 8, 2), {"kinds": ("channels", "spatial")}, "coupling 1 spatial"),
        ((8, 8, 2), {"emb_size": 16}, "unknown big_vision Jet argument 'emb_size'"),
        ((8, 8, 2), {"scale_factor": "big"}, "scale_factor must be a positive number"),
        ((8, 8, 2), {"channels_coupling_projs": ("identity",)}, "must be 'random'"),
        ((8, 8, 2), {"spatial_coupling_projs": ("diagonal",)}, "unknown spatial split"),
    ],
)
def test_bad_shapes_and_arguments(image_shape, kwargs, message):
    fx, params = _small()
    with pytest.raises(ConfigError, match=message):
        from_big_vision_jet(params, image_shape, **kwargs)


def test_bad_files(tmp_path):
    shape = (8, 8, 2)
    with pytest.raises(ConfigError, match="no big_vision checkpoint"):
        load_checkpoint(str(tmp_path / "missing.npz"), shape)
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    with pytest.raises(ConfigError, match="not a big_vision .npz checkpoint"):
        load_checkpoint(str(text), shape)
    pth = tmp_path / "model.pth"  # a torch state dict is a zip of pickles, not of arrays
    with zipfile.ZipFile(pth, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(ConfigError, match="not a big_vision Jet"):
        load_checkpoint(str(pth), shape)
    other = tmp_path / "vit.npz"
    np.savez(other, **{"params/head/kernel": np.zeros((4, 2)), "params/head/bias": np.zeros(2)})
    with pytest.raises(ConfigError, match="not a big_vision Jet"):
        load_checkpoint(str(other), shape)
    with pytest.raises(ConfigError, match="no params~ arrays"):
        load_checkpoint(str(tmp_path), shape)


def test_separate_qkv_init_draws_three_kernels():
    init = nnx.initializers.xavier_uniform()
    key = jax.random.key(0)
    kernel = side_by_side_init(init, 3)(key, (8, 24))
    parts = [init(k, (8, 8)) for k in jax.random.split(key, 3)]
    np.testing.assert_array_equal(kernel, jnp.concatenate(parts, axis=1))
    # Xavier of one (8, 8) part: bound sqrt(6 / 16), not the fused sqrt(6 / 32).
    assert float(jnp.abs(kernel).max()) > math.sqrt(6 / 32)


@pytest.mark.slow
def test_the_command_line_converts_a_big_vision_checkpoint(tmp_path):
    """``experiments.convert --source=big-vision-jet`` writes a workdir of the fixture's
    model (its origin record names the file's sha256); ``experiments.sample`` on it, whose
    images have 2 channels it cannot draw, says so in one line."""
    from tests.cli_checks import assert_one_line_error, run_commands

    checkpoint = os.path.join(FIXTURES, "big_vision_jet_small.npz")
    workdir = tmp_path / "w"
    convert, sample = run_commands(
        [
            [
                "experiments.convert",
                "--source=big-vision-jet",
                f"--checkpoint={checkpoint}",
                "--image_shape=8,8,2",
                f"--workdir={workdir}",
            ],
            ["experiments.sample", f"--workdir={workdir}"],
        ]
    )
    assert convert.returncode == 0, convert.stderr
    record = json.loads((workdir / "converted_from.json").read_text())
    assert record["source"] == "big-vision-jet" and len(record["sha256"]) == 64
    assert record["model"]["spatial_cut"] is True
    assert_one_line_error(sample, "2 channels")
