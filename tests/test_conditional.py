"""Class-conditional Glow: marginal, Bayes' rule, conditioning of samples, auxiliary
classifier, and ``flows.evaluation`` on a tiny fake split (records, noise, batch sizes)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flows.data import ImageData
from flows.errors import DatasetError
from flows.evaluation import (
    dequantization_noise,
    evaluate_conditional,
    per_example_bits_per_dim,
    per_example_conditional,
)
from flows.likelihood import bits_per_dim, dequantize_with_noise, importance_weighted_log_prob
from flows.models.glow import Glow
from flows.testing.bijector_registry import perturb_params

NUM_CLASSES = 3
SHAPE = (4, 4, 1)
COUNTS = np.array([1.0, 2.0, 3.0])

# Everything runs under nnx.jit: eager Glow calls compile each scan separately (slow on CPU).


@nnx.jit
def _initialize(model, x, labels):
    model.initialize(x, context=labels)


def perturb(model, scale, seed):
    """Adds N(0, scale^2) noise to every parameter (numpy noise: jax.random would compile a
    sampler per parameter shape, seconds on a busy CPU)."""
    perturb_params(model, np.random.default_rng(seed), scale)


@nnx.jit
def _log_prob(model, x, labels):
    return model.log_prob(x, context=labels)


@nnx.jit
def _bayes(model, x):
    return model.marginal_log_prob(x), model.classify(x)


@nnx.jit(static_argnums=1)
def _sample(model, num, key, labels):
    return model.sample(num, key, temperature=0.7, context=labels)


def perturbed_glow(condition_on="priors", *, num_levels=2, seed=0, num_classes=NUM_CLASSES, **kw):
    """A small conditional Glow (unconditional with ``num_classes=None``), initialised on
    noise, with every parameter nudged off its (often zero) initial value so that the label
    actually matters."""
    model = Glow(
        SHAPE,
        num_levels=num_levels,
        num_steps=1,
        hidden_channels=4,
        num_classes=num_classes,
        condition_on=condition_on,
        rngs=nnx.Rngs(seed),
        **kw,
    )
    x = jax.random.uniform(jax.random.key(seed), (12, *SHAPE))
    _initialize(model, x, None if num_classes is None else jnp.arange(12) % num_classes)
    perturb(model, 0.2, seed)
    return model


@pytest.fixture(scope="module")
def model():
    """condition_on='priors' with two levels: the label enters the split and the top prior."""
    m = perturbed_glow("priors")
    m.set_label_prior(COUNTS)
    return m


@pytest.fixture(scope="module")
def images():
    return jax.random.uniform(jax.random.key(7), (5, *SHAPE))


@pytest.fixture(scope="module")
def brute_force_joint(model, images):
    """log p(x|y) + log p(y) for every class, one log_prob call per class: (B, N)."""
    log_prior = np.log(COUNTS / COUNTS.sum())
    columns = [
        _log_prob(model, images, jnp.full((len(images),), y)) + log_prior[y]
        for y in range(NUM_CLASSES)
    ]
    return jnp.stack(columns, axis=1)


def test_label_prior_is_set(model):
    np.testing.assert_allclose(np.exp(model.log_label_prior[...]), COUNTS / COUNTS.sum(), rtol=1e-6)


@pytest.mark.slow
def test_marginal_and_bayes_posterior_match_brute_force(model, images, brute_force_joint):
    marginal, posterior = _bayes(model, images)
    expected = jax.scipy.special.logsumexp(brute_force_joint, axis=1)
    np.testing.assert_allclose(marginal, expected, rtol=1e-5, atol=1e-4)
    assert posterior.shape == (5, NUM_CLASSES)
    np.testing.assert_allclose(jnp.sum(posterior, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        posterior, jax.nn.softmax(brute_force_joint, axis=1), rtol=1e-4, atol=1e-6
    )
    # Not vacuous: the label changes log p(x|y).
    log_likelihoods = brute_force_joint - np.log(COUNTS / COUNTS.sum())
    assert float(jnp.max(jnp.std(log_likelihoods, axis=1))) > 1e-3


@pytest.mark.parametrize("bad", [NUM_CLASSES, -1])
def test_concrete_labels_out_of_range_are_a_one_line_error(model, images, bad):
    with pytest.raises(DatasetError, match=f"label {bad} is outside this model's classes 0..2"):
        model.context_features(np.array([0, bad]))
    with pytest.raises(DatasetError) as info:  # through the model, before any computation
        model.log_prob(images, context=jnp.array([0, 1, 2, bad, 0]))
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)


def test_traced_labels_out_of_range_give_nan(model, images):
    labels = jnp.array([0, 1, 2, NUM_CLASSES, -1])
    features = nnx.jit(lambda m, y: m.context_features(y))(model, labels)
    np.testing.assert_array_equal(features[:3], np.eye(NUM_CLASSES))
    assert bool(jnp.all(jnp.isnan(features[3:])))
    log_prob = _log_prob(model, images, labels)
    assert bool(jnp.all(jnp.isfinite(log_prob[:3]))) and bool(jnp.all(jnp.isnan(log_prob[3:])))


def _cut_label(model, where):
    """Zeroes the label projections whose graph path satisfies ``where``, so the label can
    only act through the rest of the model."""
    from flows.nn.conditioners import ContextProjection

    cut = 0
    for path, node in nnx.iter_graph(model):
        if isinstance(node, ContextProjection) and where(path):
            for p in (node.linear.kernel, node.linear.bias):
                p[...] = jnp.zeros_like(p[...])
            cut += 1
    assert cut, "no label projection matched"


@pytest.mark.slow
@pytest.mark.parametrize("condition_on", ["top", "priors", "all"])
def test_conditioning_changes_samples(model, condition_on):
    if condition_on == "top":
        m = perturbed_glow("top", num_levels=1, seed=3)
    elif condition_on == "priors":
        # Two levels; with the top prior's label projection cut, the split prior alone
        # must carry the label.
        m = nnx.clone(model)
        _cut_label(m, lambda path: path[:3] == ("levels", 1, "prior"))
    else:
        # With every prior's label projection cut, the couplings alone must carry it.
        m = perturbed_glow("all", num_levels=1, seed=3)
        _cut_label(m, lambda path: "prior" in path)
    key = jax.random.key(11)
    a = _sample(m, 4, key, jnp.zeros((4,), jnp.int32))
    again = _sample(m, 4, key, jnp.zeros((4,), jnp.int32))
    b = _sample(m, 4, key, jnp.full((4,), 2, jnp.int32))
    np.testing.assert_array_equal(a, again)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
    assert bool(jnp.all(jnp.isfinite(a))) and bool(jnp.all(jnp.isfinite(b)))


@pytest.mark.slow
def test_auxiliary_classifier_logits_and_loss_in_bits(images):
    weight_y = 0.01
    m = perturbed_glow("top", num_levels=1, weight_y=weight_y)  # classifier nudged off zero
    labels = jnp.array([0, 1, 2, 0, 1])

    @nnx.jit
    def both(m, x, y):
        return m.log_prob_and_aux_logits(x, context=y), m.log_prob_and_aux_loss(x, context=y)

    (log_prob, logits), (log_prob_again, aux_loss, metrics) = both(m, images, labels)
    assert logits.shape == (5, NUM_CLASSES)
    assert bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_allclose(log_prob, _log_prob(m, images, labels), rtol=1e-5)
    np.testing.assert_allclose(log_prob_again, log_prob, rtol=1e-6)
    # openai/glow: loss = bits/dim + weight_y * CE / ln 2 (the cross-entropy in bits).
    ce_nats = -np.mean(np.asarray(jax.nn.log_softmax(logits))[np.arange(5), labels])
    assert abs(ce_nats - math.log(NUM_CLASSES)) > 1e-3  # not the zero-initialised classifier
    assert float(aux_loss) == pytest.approx(weight_y * ce_nats / math.log(2), rel=1e-5)
    assert float(metrics["aux_ce_bits"]) == pytest.approx(ce_nats / math.log(2), rel=1e-5)


def test_evaluate_conditional_record(model):
    num_bins, n = 4, 10
    rng = np.random.default_rng(0)
    data = ImageData(
        images=rng.integers(0, num_bins, (n, *SHAPE)).astype(np.uint8),
        labels=(np.arange(n) % NUM_CLASSES).astype(np.int32),
        num_bins=num_bins,
        num_classes=NUM_CLASSES,
        name="fake:test",
    )
    key = jax.random.key(5)
    record = evaluate_conditional(model, data, batch_size=4, key=key, num_samples=2)
    for field in (
        "bits_per_dim",
        "marginal_bits_per_dim",
        "accuracy",
        "label_nll_nats",
        "chance_accuracy",
    ):
        assert np.isfinite(record[field]), field
        if field != "chance_accuracy":
            assert np.isfinite(record[f"{field}_se"]), field
    assert record["conditional"] is True
    assert record["split"] == "fake:test" and record["num_examples"] == n
    assert record["num_bins"] == num_bins and record["image_shape"] == list(SHAPE)
    assert record["importance_samples"] == 2 and record["dequantization"] == "uniform"
    assert 0.0 <= record["accuracy"] <= 1.0 and record["label_nll_nats"] >= 0.0
    assert record["chance_accuracy"] == pytest.approx(4 / 10)
    # log p(x) >= log p(x|y) + log p(y) example by example (same noise for every class), so
    # marginal bpd <= conditional bpd - mean_i log2 p(y_i) / D.
    num_dims = math.prod(SHAPE)
    log2_prior = np.log2(COUNTS / COUNTS.sum())[data.labels]
    bound = record["bits_per_dim"] - np.mean(log2_prior) / num_dims
    assert record["marginal_bits_per_dim"] <= bound + 1e-6


def _fake_split(n, num_bins, seed):
    rng = np.random.default_rng(seed)
    return ImageData(
        images=rng.integers(0, num_bins, (n, *SHAPE)).astype(np.uint8),
        labels=(np.arange(n) % NUM_CLASSES).astype(np.int32),
        num_bins=num_bins,
        num_classes=NUM_CLASSES,
        name="fake:test",
    )


@pytest.mark.slow
def test_evaluate_conditional_marginal_matches_model(model):
    """Draw i of example n is ``dequantization_noise(key, n, i)``; with k = 2 draws the
    marginal must equal the importance-weighted bound built from marginal_log_prob and
    Bayes' rule on those two dequantizations: log p(x_i|y) + log p(y) = log p(y|x_i) +
    log p(x_i)."""
    num_bins, n = 4, 5  # 5 images, as in the other tests: _bayes compiles once
    data = _fake_split(n, num_bins, seed=1)
    key = jax.random.key(9)
    record = evaluate_conditional(model, data, batch_size=n, key=key, num_samples=2)
    joints = []
    for draw in range(2):
        u = dequantization_noise(key, jnp.arange(n), draw, SHAPE)
        marginal, posterior = _bayes(model, dequantize_with_noise(data.images, u, num_bins))
        joints.append(jnp.log(posterior) + marginal[:, None])  # (B, N)
    joint = importance_weighted_log_prob(jnp.stack(joints))
    direct = bits_per_dim(jax.scipy.special.logsumexp(joint, axis=1), math.prod(SHAPE), num_bins)
    assert record["marginal_bits_per_dim"] == pytest.approx(float(jnp.mean(direct)), abs=1e-4)
    accuracy = np.mean(np.argmax(np.asarray(joint), axis=1) == data.labels)
    assert record["accuracy"] == pytest.approx(accuracy)


class _ReadOnly:
    """A split that serves its examples through ``read`` only (as a streamed split of a large
    dataset should be used): asking for the whole ``labels`` or ``images`` fails."""

    def __init__(self, data):
        self._data = data
        self.num_examples, self.image_shape = data.num_examples, data.image_shape
        self.num_bins, self.num_classes, self.name = data.num_bins, data.num_classes, data.name

    def read(self, indices):
        return self._data.read(indices)

    @property
    def labels(self):
        raise AssertionError("the evaluation read the split's labels whole")

    images = labels


def test_conditional_evaluation_reads_labels_with_the_batches(model):
    """Accuracy, label NLL and chance come from the labels each batch reads: the record of a
    split served only through ``read`` equals that of the split in memory."""
    data = _fake_split(45, num_bins=4, seed=5)
    labels = np.where(np.arange(45) < 30, 2, data.labels).astype(np.int32)
    data = dataclasses.replace(data, labels=labels)  # class 2 the most frequent: 35 of 45
    key = jax.random.key(7)
    whole = evaluate_conditional(model, data, batch_size=16, key=key)
    streamed = evaluate_conditional(model, _ReadOnly(data), batch_size=16, key=key)
    assert streamed == whole
    assert whole["chance_accuracy"] == pytest.approx(35 / 45)
    per_example = per_example_conditional(model, _ReadOnly(data), batch_size=16, key=key)
    np.testing.assert_array_equal(per_example["label"], data.labels)


@pytest.mark.slow
@pytest.mark.parametrize("conditional", [False, True])
def test_evaluation_does_not_depend_on_the_batch_size(model, conditional):
    """The noise is a function of (key, example, draw): batch sizes 16 and 50 (both with an
    uneven, padded last batch) give the same per-example numbers, for k = 2 draws."""
    m = model if conditional else perturbed_glow(num_classes=None)
    per_example = per_example_conditional if conditional else per_example_bits_per_dim
    data = _fake_split(70, num_bins=4, seed=2)

    def run(batch_size, key):
        out = per_example(m, data, batch_size=batch_size, key=key, num_samples=2)
        return out if conditional else {"bits_per_dim": out}

    key = jax.random.key(3)
    small, large = run(16, key), run(50, key)
    for name, values in small.items():
        np.testing.assert_allclose(values, large[name], rtol=1e-5, atol=5e-5, err_msg=name)
    # Not vacuous: other noise moves the per-example bits/dim far beyond that tolerance.
    other = run(50, jax.random.key(4))["bits_per_dim"]
    assert np.max(np.abs(other - large["bits_per_dim"])) > 1e-3
