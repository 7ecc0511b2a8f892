"""Jet (flows.models.jet): exact split projections, guidance, frozen projections, program size
flat in depth, conditional training through the real loop, and config errors.

Round trips and log-dets against the autodiff Jacobian of Jet's layers and of whole models
are in the generic registry (``flows/testing/bijector_registry.py``, the ``jet_*`` entries); every
``configs/jet_*.py:smoke`` trains in ``tests/test_user_paths.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flows.bijectors import Buffer
from flows.errors import ConfigError
from flows.models import build_model, sample_compiled
from flows.models.jet import Jet
from flows.models.registry import describe_model
from tests.test_precision import SQUARE, lowered_text, products

IMAGE = (4, 8, 1)  # patch 2: a 2x4 grid of T = 8 tokens of d = 4 features
SMALL = {
    "patch_size": 2,
    "block_depth": 1,
    "width": 6,  # no token or feature count of the flow
    "num_heads": 2,
    "coupling_pattern": "channels,spatial",
    "spatial_splits": "checkerboard,vstripes-inv",
}


def _jet(num_couplings=3, num_classes=None, perturb=True, image=IMAGE, **kw):
    model = Jet(
        image, num_couplings=num_couplings, num_classes=num_classes, **SMALL, **kw, rngs=nnx.Rngs(0)
    )
    if perturb:  # the networks' outputs start at zero: make every coupling act
        rng = np.random.default_rng(1)
        params = nnx.state(model, nnx.Param)
        noisy = jax.tree.map(lambda v: v + 0.3 * rng.standard_normal(v.shape, np.float32), params)
        nnx.update(model, noisy)
    return model


# -- exactness: the split projections at HIGHEST, the networks at the default --------------


@pytest.mark.slow
def test_split_projections_are_highest_and_network_products_are_not():
    model = _jet(perturb=False)
    for direction in ("forward", "inverse"):
        mixing, nets = [], []
        for op, rest, highest, files in products(lowered_text(model, direction)):
            if any("flows/nn/" in f for f in files):
                nets.append((op, rest, highest))
            elif any(f.endswith("flows/bijectors/jet_coupling.py") for f in files):
                mixing.append((op, rest, highest))
            else:
                raise AssertionError(f"a {op} from neither a projection nor a network: {files}")
        assert mixing and nets, (direction, len(mixing), len(nets))
        assert all(highest for *_, highest in mixing), (direction, mixing)
        assert not any(highest for *_, highest in nets), (direction, nets)
        # The channel projection (d = 4) and the spatial one (T = 8) are both among them.
        squares = {int(a) for op, rest, _ in mixing for a, b in SQUARE.findall(rest) if a == b}
        assert {4, 8} <= squares, (direction, squares)


# -- classifier-free guidance ---------------------------------------------------------------


@pytest.mark.slow
def test_guided_inverse():
    model = _jet(num_classes=3)
    z = model.sample_latents(jax.random.key(0), 4)
    labels = jax.nn.one_hot(jnp.array([0, 1, 2, 1]), 3)
    null = model.null_context(4)

    @nnx.jit
    def run(model, z, labels, null):
        return (
            model.inverse(z, context=labels),
            model.guided_inverse(z, context=labels, guidance=0.0),
            model.guided_inverse(z, context=labels, guidance=2.0),
            model.inverse(z, context=null),
            model.guided_inverse(z, context=null, guidance=2.0),
        )

    plain, w0, w2, unconditional, unconditional_w2 = run(model, z, labels, null)
    np.testing.assert_array_equal(w0, plain)
    assert np.all(np.isfinite(w2)) and np.max(np.abs(w2 - plain)) > 1e-3
    # Guidance away from "no label" is no change when the label is "no label" itself.
    np.testing.assert_allclose(unconditional_w2, unconditional, atol=1e-5)
    # Sampling takes it (a model trained with label dropout).
    model.label_dropout = 0.1
    images = sample_compiled(model, 4, jax.random.key(1), 1.0, labels, guidance=2.0)
    assert images.shape == (4, *IMAGE) and np.all(np.isfinite(images))


# -- the projections never train ------------------------------------------------------------


@pytest.mark.slow
def test_projections_are_buffers_not_params():
    model = _jet(num_couplings=5, perturb=False)  # two scanned groups and a tail coupling
    params = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    buffers = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, Buffer))}
    assert not any("projection" in p for p in params)
    projections = {p for p in buffers if "projection" in p}
    assert projections == {
        "groups/couplings/0/projection",
        "groups/couplings/1/projection",
        "tail/couplings/0/projection",
    }
    # Stacked per group; each one a permutation matrix.
    p = np.asarray(model.groups.couplings[1].projection[...])
    assert p.shape == (2, 8, 8)
    for m in p:
        np.testing.assert_array_equal(m @ m.T, np.eye(8))
    # The second spatial split (vstripes-inv) is not the first (checkerboard).
    assert not np.array_equal(p[0], p[1])


@pytest.mark.slow
def test_program_size_does_not_grow_with_depth():
    """3 and 9 couplings of a 3-coupling pattern: 1 and 3 scanned groups, one program."""

    def size(num_couplings):
        abstract = nnx.eval_shape(
            lambda: Jet(
                IMAGE,
                num_couplings=num_couplings,
                **{**SMALL, "coupling_pattern": "channels,channels,spatial"},
                rngs=nnx.Rngs(0),
            )
        )
        graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
        x = jax.ShapeDtypeStruct((2, *IMAGE), jnp.float32)

        def loss(params, rest, x):
            return -jnp.mean(nnx.merge(graphdef, params, rest).log_prob(x))

        text = jax.jit(jax.grad(loss)).lower(params, rest, x).as_text()
        return text.count("\n"), text.count("dot_general")

    assert size(3) == size(9)


# -- identity at initialisation and the [-1, 1) scaling -------------------------------------


@pytest.mark.slow
def test_identity_at_init_counts_the_scaling():
    model = _jet(perturb=False)
    x = jax.random.uniform(jax.random.key(0), (2, *IMAGE))
    z, log_det = nnx.jit(lambda m, x: m.forward_and_log_det(x))(model, x)
    d = np.prod(IMAGE)
    np.testing.assert_allclose(log_det, d * np.log(2.0), rtol=1e-6)
    tokens = (2 * x - 1).reshape(2, 2, 2, 4, 2, 1).transpose(0, 1, 3, 2, 4, 5).reshape(2, 8, 4)
    np.testing.assert_allclose(z, tokens, atol=1e-6)


# -- training through the real loop --------------------------------------------------------


@pytest.mark.slow
def test_conditional_smoke_run_trains_and_evaluates(tmp_path):
    """``jet_digits.py:smoke,cond`` (label dropout) through ``train_and_evaluate``: the
    conditional record (marginal bits/dim, Bayes accuracy) and a guided sample grid. The
    unconditional ``:smoke`` of every Jet config trains in tests/test_user_paths.py."""
    from configs import jet_digits
    from flows.train.loop import train_and_evaluate

    config = jet_digits.get_config("smoke,cond")
    config.train.progress = False
    config.train.num_train_steps = 2
    config.train.eval_every = 2
    config.train.checkpoint_every = 2
    record = train_and_evaluate(config, str(tmp_path))
    for field in ("bits_per_dim", "marginal_bits_per_dim", "accuracy"):
        assert np.isfinite(record[field]), (field, record)
    assert record["bits_per_dim"] > 0 and record["train_steps"] == 2


# -- config -----------------------------------------------------------------------------------


def _build(image=IMAGE, **fields):
    return build_model({"name": "jet", **SMALL, **fields}, image, 10, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"patch_size": 3}, "patch_size 3 does not divide the image size 4x8"),
        ({"num_couplings": 0}, "num_couplings must be a positive integer"),
        ({"width": 7}, "width 7 is not divisible by num_heads 2"),
        ({"coupling_pattern": "channels,diagonal"}, "unknown coupling kind 'diagonal'"),
        ({"coupling_pattern": ""}, "coupling_pattern must name at least one entry"),
        ({"spatial_splits": "spiral"}, "unknown spatial split 'spiral'"),
        ({"channel_split": "reverse"}, "unknown channel_split 'reverse'"),
        ({"scale_factor": 0.0}, "scale_factor must be a positive number"),
        ({"image": (4, 12, 1), "patch_size": 4}, "spatial couplings need an even number of tokens"),
        ({"image": (4, 6, 1)}, "spatial split 'vstripes-inv' of a 2x3 grid is not into halves"),
    ],
)
def test_bad_config_is_a_one_line_config_error(fields, message):
    with pytest.raises(ConfigError, match=message) as info:
        _build(**fields)
    assert "\n" not in str(info.value)


def test_describe():
    text = describe_model({"name": "jet", **SMALL, "num_couplings": 16, "conditional": True})
    assert text == "jet p2 16x1 w6 h2 cs cond"
