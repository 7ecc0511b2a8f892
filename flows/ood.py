"""Out-of-distribution (OOD) detection with a density model: bits/dim as the OOD score.

A model of ``p(x)`` trained on one dataset scores each example of another by its bits/dim
``-log2 p(x) / D`` (per-example, ``flows.evaluation``; the marginal ``p(x)`` for a
label-conditioned model), higher meaning "more OOD". How well that score separates the two
sets is the area under the ROC curve (``auroc``): 1 when every OOD example has more bits/dim
than every in-distribution one, 0.5 for a score that cannot tell them apart, and below 0.5
when the model finds the OOD data *more* likely (the failure Nalisnick et al. 2019 report
for flows: simple OOD images can get higher likelihood).
"""

from __future__ import annotations

import numpy as np

from flows.data.source import Unlabelled
from flows.errors import ConfigError
from flows.evaluation import per_example_bits_per_dim, per_example_conditional
from flows.likelihood import mean_and_standard_error
from flows.models.base import is_conditional


def auroc(in_scores, out_scores) -> float:
    """Area under the ROC curve of a score that is higher for OOD examples.

    The Mann-Whitney statistic: the probability that an OOD example scores above an
    in-distribution one, ties counting 1/2,

        AUROC = 1/(m n) sum_i sum_j [ 1(o_j > s_i) + 1/2 1(o_j = s_i) ],

    over in-distribution scores ``s_1..s_m`` and OOD scores ``o_1..o_n``. Exact (integer
    counts from two binary searches per OOD score; one division at the end), O((m + n) log m).
    Infinite scores are ordered as usual; NaN or an empty input raises ``ValueError``.
    """
    s = np.sort(np.asarray(in_scores, np.float64).reshape(-1))
    o = np.asarray(out_scores, np.float64).reshape(-1)
    if s.size == 0 or o.size == 0:
        raise ValueError(f"auroc needs scores of both sets, got {s.size} and {o.size}")
    if np.isnan(s).any() or np.isnan(o).any():
        raise ValueError("auroc: NaN scores cannot be ranked")
    below = np.searchsorted(s, o, side="left")  # in-distribution scores < o_j
    at_or_below = np.searchsorted(s, o, side="right")  # ... <= o_j
    twice_u = int(below.sum()) + int(at_or_below.sum())  # 2 * (count(<) + count(=) / 2)
    return twice_u / (2 * s.size * o.size)


def check_same_data(data, image_shape, num_bins: int, trained_on: str) -> None:
    """Raises a one-line ``ConfigError`` unless ``data`` (a split) has the image
    shape and number of levels the model was trained on (``trained_on`` names that data):
    bits/dim of other shapes or levels would not be comparable, or not defined."""
    image_shape, num_bins = tuple(int(s) for s in image_shape), int(num_bins)
    if data.image_shape == image_shape and data.num_bins == num_bins:
        return
    from flows.data import digits_ood  # TFDS: imported on this error path only

    hint = ""
    if (image_shape, num_bins) == (digits_ood.IMAGE_SHAPE, digits_ood.NUM_BINS):
        hint = " (offline ones for the digits: photo_patches, digits_inverted)"
    raise ConfigError(
        f"{data.name} has {_shape(data.image_shape)} images with {data.num_bins} levels, but "
        f"the run was trained on {_shape(image_shape)} images with {num_bins} levels "
        f"({trained_on}); choose a dataset of that shape and number of levels{hint}"
    )


def _shape(shape) -> str:
    return "x".join(map(str, shape))


def per_example_scores(model, data, *, batch_size: int, key, num_samples: int = 1, progress=None):
    """Bits/dim of ``p(x)`` per example of ``data``, shape (N,): ``-log2 p(x) / D`` under
    the model's dequantization with the evaluation's noise (``flows.evaluation``); for a
    label-conditioned model the marginal ``p(x) = sum_y p(x|y) p(y)``.

    The marginal reads no label, so a conditional model sees labels 0 (an OOD set's labels,
    other classes or none, never reach the conditional bookkeeping).
    """
    kwargs = dict(batch_size=batch_size, key=key, num_samples=num_samples, progress=progress)
    if not is_conditional(model):
        return per_example_bits_per_dim(model, data, **kwargs)
    return per_example_conditional(model, Unlabelled(data), **kwargs)["marginal_bits_per_dim"]


def evaluate_ood(model, in_data, ood_data, *, batch_size, key, num_samples=1, progress=None):
    """Scores both sets with ``per_example_scores`` (same parameters, same ``key``: example
    ``n`` of either set gets the same noise draw) -> ``(record, in_bpd, ood_bpd)``.

    The record has, for ``in`` and ``ood``: ``<prefix>_split``, ``_num_examples``,
    ``_bits_per_dim`` and ``_bits_per_dim_se`` (mean and standard error over examples);
    ``auroc`` (of bits/dim as the OOD score), ``score`` (which bits/dim), ``conditional``,
    ``num_bins``, ``image_shape``, ``dequantization`` and ``importance_samples``.
    """
    kwargs = dict(batch_size=batch_size, key=key, num_samples=num_samples, progress=progress)
    in_bpd = per_example_scores(model, in_data, **kwargs)
    ood_bpd = per_example_scores(model, ood_data, **kwargs)
    conditional = is_conditional(model)
    record = {"score": "marginal_bits_per_dim" if conditional else "bits_per_dim"}
    for prefix, bpd, data in (("in", in_bpd, in_data), ("ood", ood_bpd, ood_data)):
        mean, se = mean_and_standard_error(bpd)
        record.update(
            {
                f"{prefix}_split": data.name,
                f"{prefix}_num_examples": int(data.num_examples),
                f"{prefix}_bits_per_dim": mean,
                f"{prefix}_bits_per_dim_se": se,
            }
        )
    record.update(
        auroc=auroc(in_bpd, ood_bpd),
        conditional=bool(conditional),
        num_bins=int(in_data.num_bins),
        image_shape=list(in_data.image_shape),
        dequantization=model.dequantizer.kind,
        importance_samples=int(num_samples),
    )
    return record, in_bpd, ood_bpd


def ood_summary_line(record: dict) -> str:
    """One human-readable line of an OOD record, with units and provenance."""

    def part(prefix):
        return (
            f"{record[f'{prefix}_split']} {record[f'{prefix}_bits_per_dim']:.4f} ± "
            f"{record[f'{prefix}_bits_per_dim_se']:.4f} bits/dim "
            f"({record[f'{prefix}_num_examples']} examples)"
        )

    what = "marginal bits/dim" if record.get("conditional") else "bits/dim"
    return (
        f"in-distribution {part('in')}; OOD {part('ood')}; AUROC {record['auroc']:.4f} "
        f"({what} as the OOD score; k={record['importance_samples']}, "
        f"{record.get('parameters', '?')} params, step {record.get('checkpoint_step', '?')})"
    )
