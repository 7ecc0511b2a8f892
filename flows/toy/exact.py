"""Exact reference models of a table, by counting its records.

With ``x`` all axes but the last and ``y`` the last (the label):

* joint            ``p(x, y) = n(x, y) / N``
* discriminative   ``p(y | x) = n(x, y) / n(x)``          (undefined, NaN, where n(x) = 0)
* generative       ``p(x | y) = n(x, y) / n(y)``
* label marginal   ``p(y) = n(y) / N``
* Bayes classifier ``p(y | x) = p(x | y) p(y) / sum_y' p(x | y') p(y')``, which must equal the
  discriminative one: the identity the flows' posteriors are checked against.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from flows.toy.tables import Table


def _normalise(a: np.ndarray, axis) -> np.ndarray:
    total = a.sum(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, a / np.where(total > 0, total, 1), np.nan)


def entropy_bits(p: np.ndarray) -> float:
    p = np.asarray(p, np.float64).reshape(-1)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def bayes_posterior(likelihood: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """``p(y | x)`` from ``p(x | y)`` (label on the last axis) and ``p(y)``."""
    return _normalise(np.asarray(likelihood) * np.asarray(prior), axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class CountingModel:
    """All the exact distributions of a table; arrays have the table's shape (label last)."""

    counts: np.ndarray
    joint: np.ndarray
    label_marginal: np.ndarray
    x_marginal: np.ndarray
    discriminative: np.ndarray  # p(y | x): sums to 1 over the last axis
    generative: np.ndarray  # p(x | y): sums to 1 over every axis but the last
    bayes: np.ndarray  # p(y | x) by Bayes' rule from generative and label_marginal

    @property
    def entropy_bits(self) -> float:
        return entropy_bits(self.joint)

    @property
    def conditional_entropy_bits(self) -> float:
        """``H(x | y)``: the best conditional NLL of ``p(x | y)`` in bits."""
        return self.entropy_bits - entropy_bits(self.label_marginal)


def count_records(records: np.ndarray, shape) -> np.ndarray:
    counts = np.zeros(tuple(shape), np.int64)
    np.add.at(counts, tuple(np.asarray(records).T), 1)
    return counts


def fit(table: Table) -> CountingModel:
    """The counting model of a table, computed from its records."""
    counts = count_records(table.records(), table.shape)
    x_axes = tuple(range(counts.ndim - 1))
    n = counts.astype(np.float64)
    joint = n / n.sum()
    label = joint.sum(axis=x_axes)
    generative = _normalise(n, axis=x_axes)
    return CountingModel(
        counts=counts,
        joint=joint,
        label_marginal=label,
        x_marginal=joint.sum(axis=-1),
        discriminative=_normalise(n, axis=-1),
        generative=generative,
        bayes=bayes_posterior(generative, label),
    )
