"""bits/dim and dequantization against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flows.likelihood import (
    bits_per_dim,
    dequantize,
    dequantize_with_noise,
    importance_weighted_log_prob,
    mean_and_standard_error,
    quantize,
)


@pytest.mark.parametrize("num_bins,expected", [(256, 8.0), (32, 5.0), (17, math.log2(17))])
def test_uniform_density_gives_log2_levels_bits_per_dim(num_bins, expected):
    # A uniform density on [0, 1)^D has log p = 0 everywhere.
    assert bits_per_dim(0.0, num_dims=3072, num_bins=num_bins) == pytest.approx(expected)


def test_bits_per_dim_hand_computed():
    # D = 2, K = 4: (-(-1.0) + 2 log 4) / (2 log 2) = (1 + 2.7726) / 1.3863
    value = bits_per_dim(jnp.array([-1.0]), num_dims=2, num_bins=4)
    np.testing.assert_allclose(value, (1 + 2 * math.log(4)) / (2 * math.log(2)), rtol=1e-6)
    assert float(value[0]) == pytest.approx(2.7213475, rel=1e-6)


def test_dequantize_stays_in_its_cell_and_quantize_inverts_it():
    values = jnp.arange(17).reshape(1, 17)
    x = dequantize(jax.random.key(0), jnp.tile(values, (50, 1)), 17)
    assert float(x.min()) >= 0 and float(x.max()) < 1
    np.testing.assert_array_equal(quantize(x, 17), jnp.tile(values, (50, 1)))
    # Cell i is [i/17, (i+1)/17).
    assert bool(jnp.all(x * 17 - values >= 0)) and bool(jnp.all(x * 17 - values < 1))


@pytest.mark.parametrize("num_bins", [17, 256])
def test_dequantize_stays_below_one_for_the_largest_noise(num_bins):
    u = np.nextafter(np.float32(1), np.float32(0))  # the largest float32 below 1
    top = np.float32(num_bins - 1)
    assert (top + u) / np.float32(num_bins) == 1.0  # float32 rounds the top cell up to 1
    values = jnp.arange(num_bins)
    x = dequantize_with_noise(values, jnp.full(values.shape, u), num_bins)
    assert x.dtype == jnp.float32
    assert float(x[-1]) == float(u)  # clamped to the largest float32 below 1
    assert bool(jnp.all(x < 1)) and bool(jnp.all(x >= values / num_bins))
    np.testing.assert_array_equal(dequantize_with_noise(values, 0.0, num_bins), values / num_bins)


def test_importance_weighted_bound():
    lp = jnp.log(jnp.array([[0.2], [0.6]]))
    np.testing.assert_allclose(importance_weighted_log_prob(lp), [math.log(0.4)], rtol=1e-6)


def test_mean_and_standard_error():
    mean, se = mean_and_standard_error([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)


# -- AUROC of an OOD score (flows.ood.auroc) ---------------------------------------------------


def test_auroc_perfect_reversed_and_tied():
    from flows.ood import auroc

    assert auroc([1.0, 2.0, 3.0], [4.0, 5.0]) == 1.0  # every OOD score above every in-dist one
    assert auroc([4.0, 5.0], [1.0, 2.0, 3.0]) == 0.0  # every OOD score below
    assert auroc([2.0, 2.0], [2.0, 2.0, 2.0]) == 0.5  # all tied: each pair counts 1/2
    assert auroc([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.5  # same scores: 3 ties + 3 of 6 above
    assert auroc([1.0, -np.inf], [np.inf]) == 1.0


def test_auroc_hand_computed():
    from flows.ood import auroc

    # In-distribution 1, 2, 3; OOD 2, 4. Pairs (OOD above: 1, tie: 1/2):
    # o=2: above 1, tied with 2, below 3 -> 1 + 1/2; o=4: above all three -> 3. 4.5 / 6.
    assert auroc([3.0, 1.0, 2.0], [4.0, 2.0]) == 0.75
    # o=1 ties with both 1s (1/2 + 1/2) and is below 5 -> 1 of 3 pairs.
    assert auroc([1, 1, 5], [1]) == pytest.approx(1 / 3)


def test_auroc_matches_the_pairwise_definition_with_ties_and_is_antisymmetric():
    from flows.ood import auroc

    rng = np.random.RandomState(0)
    in_scores, out_scores = rng.randint(0, 6, size=37), rng.randint(2, 9, size=23)  # many ties
    o, s = out_scores[:, None], in_scores[None, :]  # all 23 x 37 pairs
    expected = np.mean((o > s) + 0.5 * (o == s))
    assert 0.6 < expected < 1 and auroc(in_scores, out_scores) == pytest.approx(expected, abs=1e-12)
    assert auroc(in_scores, out_scores) + auroc(out_scores, in_scores) == pytest.approx(1.0)


def test_auroc_rejects_nan_and_empty_scores():
    from flows.ood import auroc

    with pytest.raises(ValueError, match="NaN"):
        auroc([1.0, np.nan], [2.0])
    with pytest.raises(ValueError, match="both sets"):
        auroc([], [2.0])
