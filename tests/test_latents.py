"""``flows.latents`` on a tiny label-conditioned Glow built here (no training): the round
trip, interpolation endpoints, the class direction's slider at 0, the label swap, and the
error of a family without an inverse. The command line (``experiments.latents``) on trained
runs: tests/test_user_paths.py, section 6."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flows import latents as lat
from flows.data import ImageData
from flows.errors import ConfigError
from flows.models import DensityModel, Glow

SHAPE = (4, 4, 1)
NUM_CLASSES, NUM_BINS, N = 3, 5, 9
BATCH = 4  # not a divisor of N: the last batch is padded


@pytest.fixture(scope="module")
def model():
    """Two levels (a latents pytree of two leaves), the label in every layer, every
    parameter nudged off its (often zero) initial value (no data-dependent initialisation:
    one compilation fewer, and any parameters will do for an exact inverse)."""
    m = Glow(
        SHAPE,
        num_levels=2,
        num_steps=1,
        hidden_channels=4,
        num_classes=NUM_CLASSES,
        condition_on="all",
        logit_alpha=0.05,
        rngs=nnx.Rngs(0),
    )
    rng = np.random.default_rng(0)  # numpy noise: no per-shape XLA compilation
    params = nnx.state(m, nnx.Param)
    nnx.update(
        m,
        jax.tree.map(
            lambda v: jnp.asarray(v + 0.2 * rng.standard_normal(v.shape), v.dtype), params
        ),
    )
    return m


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    images = rng.integers(0, NUM_BINS, (N, *SHAPE)).astype(np.uint8)
    labels = (np.arange(N) % NUM_CLASSES).astype(np.int32)
    return ImageData(images, labels, NUM_BINS, NUM_CLASSES, "fake:test")


@pytest.fixture(scope="module")
def encoded(model, data):
    return lat.encode_split(model, data, batch_size=BATCH)


def _mid_cell(images):
    return (images.astype(np.float32) + 0.5) / NUM_BINS


def test_round_trip_of_the_split(model, data, encoded):
    """float32 round trip: the error is a few float32 ulps of the unit scale (< 1e-5, far
    below half a cell, 1/(2K) = 0.1), so every image quantizes back to itself."""
    assert [z.shape[0] for z in jax.tree.leaves(encoded.latents)] == [N, N]
    assert encoded.max_abs_error.shape == (N,) and encoded.exact.all()
    summary = encoded.reconstruction()
    assert 0 <= summary["reconstruction_max_abs_error"] < 1e-5
    assert summary["exact_reconstruction_fraction"] == 1.0 and summary["dtype"] == "float32"
    # The latents are those of the mid-cell x under the true labels, batch padding or not.
    one, _ = nnx.jit(lambda m, x, y: m.forward_and_log_det(x, context=y))(
        model, jnp.asarray(_mid_cell(data.images[-1:])), jnp.asarray(data.labels[-1:])
    )
    for z, z_one in zip(jax.tree.leaves(encoded.latents), jax.tree.leaves(one), strict=True):
        np.testing.assert_allclose(z[-1:], z_one, atol=1e-5)


def test_interpolation_endpoints_decode_to_the_two_images(model, data, encoded):
    left, right = np.array([0, 1]), np.array([4, 8])  # labels (0, 1) and (1, 2)
    z0, z1 = lat.take(encoded.latents, left), lat.take(encoded.latents, right)
    steps = 5
    path = lat.interpolate(z0, z1, steps)
    weights = lat.interpolate_labels(data.labels[left], data.labels[right], steps, NUM_CLASSES)
    assert weights.shape == (2 * steps, NUM_CLASSES)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    for leaf, a, b in zip(*map(jax.tree.leaves, (path, z0, z1)), strict=True):
        leaf = leaf.reshape(2, steps, *a.shape[1:])
        np.testing.assert_array_equal(leaf[:, 0], a)
        np.testing.assert_array_equal(leaf[:, -1], b)
        np.testing.assert_allclose(leaf[:, 2], (a + b) / 2, rtol=1e-6, atol=1e-6)  # t = 1/2
    x = lat.decode(model, path, weights, batch_size=BATCH).reshape(2, steps, *SHAPE)
    np.testing.assert_allclose(x[:, 0], _mid_cell(data.images[left]), atol=1e-5)
    np.testing.assert_allclose(x[:, -1], _mid_cell(data.images[right]), atol=1e-5)
    assert np.isfinite(x).all()


def test_class_direction_at_alpha_zero_is_the_image(model, data, encoded):
    a, b = 1, 2
    d = lat.class_direction(encoded.latents, encoded.labels, a, b)
    for leaf, z in zip(jax.tree.leaves(d), jax.tree.leaves(encoded.latents), strict=True):
        expected = z[data.labels == b].mean(0) - z[data.labels == a].mean(0)
        np.testing.assert_allclose(leaf, expected, rtol=1e-6, atol=1e-6)
    rows = np.flatnonzero(data.labels == a)
    alphas = [-1.0, 0.0, 1.5]
    moved = lat.shift_along(lat.take(encoded.latents, rows), d, alphas)
    for leaf, z, dz in zip(*map(jax.tree.leaves, (moved, encoded.latents, d)), strict=True):
        leaf = leaf.reshape(len(rows), len(alphas), *dz.shape)
        np.testing.assert_array_equal(leaf[:, 1], z[rows])
        np.testing.assert_allclose(
            leaf[:, 2] - leaf[:, 0],
            2.5 * np.broadcast_to(dz, leaf[:, 0].shape),
            rtol=1e-5,
            atol=1e-5,
        )
    levels, finite = lat.decode_levels(
        model, moved, np.full(len(rows) * len(alphas), a), num_bins=NUM_BINS, batch_size=BATCH
    )
    assert finite.all()
    levels = levels.reshape(len(rows), len(alphas), *SHAPE)
    np.testing.assert_array_equal(levels[:, 1], data.images[rows])


def test_label_swap_keeps_the_image_under_its_own_label(model, data, encoded):
    rows = np.arange(4)
    swapped, labels = lat.label_swap(lat.take(encoded.latents, rows), NUM_CLASSES)
    assert labels.tolist() == [0, 1, 2] * 4
    levels, finite = lat.decode_levels(model, swapped, labels, num_bins=NUM_BINS, batch_size=BATCH)
    assert finite.all()
    levels = levels.reshape(len(rows), NUM_CLASSES, *SHAPE)
    own = levels[rows, data.labels[rows]]
    np.testing.assert_array_equal(own, data.images[rows])
    # The label matters: some image changes under another label.
    assert any((levels[i, y] != own[i]).any() for i in rows for y in range(NUM_CLASSES))


def test_a_decode_that_overflows_is_flagged_not_drawn(model, encoded):
    """Latents far out (|z| = 1e30) overflow the inverse: flagged non-finite, levels 0."""
    far = jax.tree.map(lambda z: np.full_like(z[:2], 1e30), encoded.latents)
    levels, finite = lat.decode_levels(
        model, far, np.array([0, 1]), num_bins=NUM_BINS, batch_size=BATCH
    )
    assert finite.tolist() == [False, False] and (levels == 0).all()


def test_bad_requests_are_config_errors(encoded):
    with pytest.raises(ConfigError, match="at least 2 steps"):
        lat.interpolation_times(1)
    with pytest.raises(ConfigError, match="outside the model's classes"):
        lat.class_weights(np.array([0, NUM_CLASSES]), NUM_CLASSES)
    with pytest.raises(ConfigError, match="class 7 has no example"):
        lat.class_direction(encoded.latents, encoded.labels, 0, 7)


class _NoInverse(DensityModel):
    """A family with a forward map only: ``z = 2x``."""

    def forward_and_log_det(self, x, *, context=None):
        return 2 * x, jnp.full(x.shape[:1], x[0].size * jnp.log(2.0))


def test_a_family_without_inverse_is_a_config_error(data):
    unconditional = ImageData(data.images, np.zeros(N, np.int32), NUM_BINS, 1, "fake:test")
    with pytest.raises(ConfigError, match="_NoInverse has no inverse"):
        lat.encode_split(_NoInverse(SHAPE, None), unconditional, batch_size=BATCH)
