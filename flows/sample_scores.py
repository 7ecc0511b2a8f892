"""Scores of a class-conditional model's samples without FID, and what guidance costs in bits.

For each guidance weight w, ``per_class`` samples of every class are drawn (classifier-free
guidance, ``DensityModel.sample``), quantized to the data's levels, and scored as data is
(uniform dequantization noise from a fixed key, ``flows.evaluation``):

* ``sample_accuracy``: how often the model's own Bayes classifier, ``p(y | x)`` of the
  *unguided* conditional model and the label prior (``DensityModel.classify``), names the
  class the sample was drawn for;
* ``sample_bits_per_dim``: their bits/dim under the unguided ``p(x | y)`` of that class, and
  ``sample_guided_bits_per_dim`` under the guided model ``p_w(x | y)`` that drew them
  (``DensityModel.guided_log_prob``), both of the quantized samples dequantized afresh;
  ``continuous_sample_guided_bits_per_dim``: the samples as drawn (before quantization)
  under ``p_w``; at temperature 1 they are draws of ``p_w``, so this is a Monte-Carlo
  estimate of its entropy on the bits/dim scale. The gap between the two says how much of
  ``p_w``'s mass sits on scales finer than a quantization bin (a guided map with large
  scales is sharp: a sample moved within its bin can be far less likely);
  ``sample_out_of_range``: the fraction of the samples' values outside [0, 1) before
  quantization (clipped to the end levels);
* ``diversity``: the mean distance between two samples of one class (root mean square over
  the D values, on the unit scale ``v / K``), averaged over the classes, beside
  ``test_diversity``, the same figure of the test split's images, and their ratio;

and the guided model's price on real data, ``test_guided_bits_per_dim``: the test split's
``-log2 p_w(x | y) / D`` for its labels (at w = 0 the conditional test bits/dim). Guidance
buys sample accuracy; this is what it costs in likelihood of the data.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flows.data.arrays import ImageData
from flows.evaluation import per_example_bits_per_dim, per_example_conditional
from flows.likelihood import bits_per_dim, mean_and_standard_error, quantize
from flows.models.base import sample_and_stats_compiled


@functools.partial(nnx.jit, static_argnames=("guidance",))
def _guided_log_prob(model, x, labels, guidance: float):
    return model.guided_log_prob(x, context=labels, guidance=guidance)


def draw_per_class(model, per_class: int, key, *, temperature, guidance, sampler, num_bins):
    """``per_class`` samples of every class (class y from ``fold_in(key, y)``), one compiled
    call per class: ``{'images': (C*N, H, W, C) int32 levels, 'labels': (C*N,), 'stats':
    the sampler's per call (``sample_and_stats_compiled``, as lists), 'guided_bits_per_dim':
    (C*N,) of the continuous samples (before quantization) under the guided model that drew
    them, 'out_of_range': (C*N,) the fraction of each sample's values outside [0, 1)}``."""
    out = {name: [] for name in ("images", "labels", "stats", "guided_bits_per_dim")}
    out["out_of_range"] = []
    num_dims = math.prod(model.image_shape)
    for y in range(model.num_classes):
        labels = jnp.full((per_class,), y)
        x, s = sample_and_stats_compiled(
            model, per_class, jax.random.fold_in(key, y), temperature, labels, guidance,
            False, sampler,
        )  # fmt: skip
        log_p = _guided_log_prob(model, x, labels, guidance)
        out["guided_bits_per_dim"].append(np.asarray(bits_per_dim(log_p, num_dims, num_bins)))
        outside = (x < 0) | (x >= 1)
        out["out_of_range"].append(np.asarray(jnp.mean(outside.reshape(per_class, -1), axis=1)))
        out["images"].append(np.asarray(quantize(x, num_bins)))
        out["labels"].append(np.full((per_class,), y, np.int32))
        out["stats"].append({name: np.asarray(v).tolist() for name, v in s.items()})
    return {k: v if k == "stats" else np.concatenate(v) for k, v in out.items()}


def within_class_distance(images, labels, num_bins: int) -> float:
    """The mean distance between two different images of one class, ``||v_i - v_j|| / (K
    sqrt(D))`` (root mean square per value on the unit scale), averaged over the classes
    that have at least two images."""
    flat = np.asarray(images, np.float64).reshape(len(images), -1) / num_bins
    means = []
    for y in np.unique(labels):
        a = flat[labels == y]
        if len(a) < 2:
            continue
        sq = np.sum(a**2, axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * a @ a.T, 0.0)
        upper = np.triu_indices(len(a), 1)
        means.append(np.mean(np.sqrt(d2[upper] / flat.shape[1])))
    return float(np.mean(means))


def _mean_se(values, name: str) -> dict:
    mean, se = mean_and_standard_error(values)
    return {name: mean, f"{name}_se": se}


def score_samples(model, images, labels, *, num_bins: int, key, guidance, batch_size: int):
    """Accuracy of the unguided Bayes classifier, bits/dim under the unguided and the guided
    model of quantized samples ``images`` drawn for ``labels``: means and standard errors."""
    data = ImageData(
        np.asarray(images, np.uint8 if num_bins <= 256 else np.uint16),
        np.asarray(labels, np.int32),
        num_bins,
        model.num_classes,
        name=f"samples (w={guidance:g})",
    )
    plain = per_example_conditional(model, data, batch_size=batch_size, key=key)
    guided = plain["bits_per_dim"]
    if guidance:
        guided = per_example_bits_per_dim(
            model, data, batch_size=batch_size, key=key, guidance=guidance
        )
    return {
        **_mean_se(plain["accuracy"], "sample_accuracy"),
        **_mean_se(plain["bits_per_dim"], "sample_bits_per_dim"),
        **_mean_se(guided, "sample_guided_bits_per_dim"),
    }


def guidance_sweep(
    model,
    test,
    *,
    weights,
    per_class: int,
    sample_key,
    noise_key,
    temperature: float,
    sampler,
    batch_size: int,
    progress=None,
) -> dict:
    """The module docstring's scores for each guidance weight of ``weights`` on the test
    split ``test``: ``{'rows': [one dict per weight], ...}`` with what was measured how.
    Samples are drawn from ``sample_key`` (the same latents for every weight), and the
    dequantization noise of test images and samples comes from ``noise_key``
    (``flows.evaluation``: with the run's evaluation key, the w = 0 test figure is the
    run's conditional test bits/dim)."""
    num_bins = test.num_bins
    test_images, test_labels = test.read(np.arange(test.num_examples))
    test_diversity = within_class_distance(test_images, test_labels, num_bins)
    rows = []
    for w in weights:
        w = float(w)
        drawn = draw_per_class(
            model,
            per_class,
            sample_key,
            temperature=temperature,
            guidance=w,
            sampler=sampler,
            num_bins=num_bins,
        )
        images, labels, stats = drawn["images"], drawn["labels"], drawn["stats"]
        row = {"guidance": w}
        test_bpd = per_example_bits_per_dim(
            model, test, batch_size=batch_size, key=noise_key, guidance=w
        )
        row.update(_mean_se(test_bpd, "test_guided_bits_per_dim"))
        row.update(
            score_samples(
                model,
                images,
                labels,
                num_bins=num_bins,
                key=noise_key,
                guidance=w,
                batch_size=batch_size,
            )
        )
        row.update(_mean_se(drawn["guided_bits_per_dim"], "continuous_sample_guided_bits_per_dim"))
        row["sample_out_of_range"] = float(np.mean(drawn["out_of_range"]))
        diversity = within_class_distance(images, labels, num_bins)
        row.update(diversity=diversity, diversity_ratio=diversity / test_diversity)
        if stats and stats[0]:
            row["sampler_stats"] = stats
        rows.append(row)
        if progress is not None:
            progress(row)
    return {
        "rows": rows,
        "per_class": int(per_class),
        "num_samples": int(per_class * model.num_classes),
        "temperature": float(temperature),
        "test_split": test.name,
        "test_examples": int(test.num_examples),
        "test_diversity": test_diversity,
        "num_bins": int(num_bins),
        "image_shape": list(test.image_shape),
        "dequantization": model.dequantizer.kind,
        "diversity_measure": "mean over classes of the mean distance between two images of "
        "the class, ||v_i - v_j|| / (K sqrt(D))",
        "num_dims": math.prod(test.image_shape),
    }
