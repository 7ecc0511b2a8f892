"""Contingency tables as data: named axes, named categories per axis, and integer counts.

The last axis is the *label* ``y`` (the one a classifier predicts); the others are ``x``.
A table is a distribution known exactly, ``p(cell) = count / total``, and the data set of
``total`` records it counts. Its dequantized samples are ``x_d = (i_d + u_d) / n_d`` with
``u ~ U[0, 1)^D``: a density on the unit cube that is constant on each cell.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flows.errors import ConfigError


@dataclasses.dataclass(frozen=True, eq=False)
class Table:
    """Counts of a D-way table. ``counts[i, j, ...]`` is the number of records in that cell."""

    axes: tuple[str, ...]
    categories: tuple[tuple[str, ...], ...]
    counts: np.ndarray
    name: str = "table"

    def __post_init__(self):
        counts = np.asarray(self.counts)
        if not np.issubdtype(counts.dtype, np.integer):
            if not np.all(counts == np.round(counts)):
                raise ConfigError("table counts must be whole numbers")
            counts = counts.astype(np.int64)
        if counts.ndim < 2:
            raise ConfigError(f"a table needs at least 2 axes (x and label), got {counts.ndim}")
        if np.any(counts < 0) or counts.sum() <= 0:
            raise ConfigError("table counts must be non-negative with a positive total")
        if len(self.axes) != counts.ndim or len(self.categories) != counts.ndim:
            raise ConfigError(
                f"{counts.ndim} axes in the counts but {len(self.axes)} axis names and "
                f"{len(self.categories)} category lists"
            )
        for axis, cats, n in zip(self.axes, self.categories, counts.shape, strict=True):
            if len(cats) != n:
                raise ConfigError(f"axis {axis!r} has {n} levels but {len(cats)} category names")
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "axes", tuple(self.axes))
        object.__setattr__(self, "categories", tuple(tuple(c) for c in self.categories))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.counts.shape)

    @property
    def num_dims(self) -> int:
        return self.counts.ndim

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def probabilities(self) -> np.ndarray:
        """The exact joint ``p(cell) = count / total`` (float64)."""
        return self.counts / self.counts.sum()

    @property
    def zero_cells(self) -> list[tuple[int, ...]]:
        return [tuple(int(i) for i in c) for c in np.argwhere(self.counts == 0)]

    def entropy_bits(self) -> float:
        """Entropy of the joint in bits: ``-sum p log2 p`` over non-empty cells."""
        p = self.probabilities[self.counts > 0]
        return float(-(p * np.log2(p)).sum())

    def records(self) -> np.ndarray:
        """The data set the table counts: ``(total, D)`` integer cell indices, one per record."""
        cells = np.argwhere(np.ones(self.shape, bool))
        return np.repeat(cells, self.counts.reshape(-1), axis=0)

    def cell_name(self, cell: Sequence[int]) -> str:
        return ", ".join(f"{self.categories[d][i]}" for d, i in enumerate(cell))


def from_counts(
    counts,
    *,
    axes: Sequence[str] | None = None,
    categories: Sequence[Sequence[str]] | None = None,
    name: str = "table",
) -> Table:
    """A table from nested counts; axes default to x0, x1, ..., y and categories to 0, 1, ..."""
    counts = np.asarray(counts)
    if axes is None:
        axes = [f"x{d}" for d in range(counts.ndim - 1)] + ["y"]
    if categories is None:
        categories = [[str(i) for i in range(n)] for n in counts.shape]
    return Table(tuple(axes), tuple(tuple(c) for c in categories), counts, name)


def from_records(
    records: Sequence[Sequence[str]],
    *,
    axes: Sequence[str],
    categories: Sequence[Sequence[str]],
    name: str = "table",
) -> Table:
    """A table by counting records, each a tuple of category names (one per axis)."""
    counts = np.zeros([len(c) for c in categories], np.int64)
    for rec in records:
        if len(rec) != len(axes):
            raise ConfigError(f"record {rec!r} does not have one value per axis {tuple(axes)}")
        counts[tuple(list(c).index(v) for c, v in zip(categories, rec, strict=True))] += 1
    return Table(tuple(axes), tuple(tuple(c) for c in categories), counts, name)


def gender_age() -> Table:
    """The seed table: one male over 30, one male under 30, two females over 30.

    x = gender (M, F), y = age class (<30, >30): p(M,<30) = p(M,>30) = 1/4, p(F,>30) = 1/2,
    p(F,<30) = 0; entropy 1.5 bits.
    """
    people = [("M", ">30"), ("M", "<30"), ("F", ">30"), ("F", ">30")]
    return from_records(
        people, axes=("gender", "age"), categories=(("M", "F"), ("<30", ">30")), name="gender_age"
    )


def random_table(
    seed: int, shape: Sequence[int], *, zero_cells: int = 0, max_count: int = 5
) -> Table:
    """Counts drawn uniformly from 1..max_count, then ``zero_cells`` cells set to zero, never
    emptying a whole slice (so every marginal and conditional is defined)."""
    shape = tuple(int(n) for n in shape)
    rng = np.random.default_rng(seed)
    if zero_cells >= math.prod(shape):
        raise ConfigError(f"{zero_cells} zero cells leave nothing in a {shape} table")
    for _ in range(1000):
        counts = rng.integers(1, max_count + 1, size=shape)
        flat = counts.reshape(-1)
        flat[rng.choice(flat.size, size=zero_cells, replace=False)] = 0
        if all(
            np.all(counts.sum(axis=tuple(a for a in range(len(shape)) if a != d)) > 0)
            for d in range(len(shape))
        ):
            return from_counts(counts, name=f"random_{'x'.join(map(str, shape))}_seed{seed}")
    raise ConfigError(f"could not place {zero_cells} zero cells in a {shape} table")


def sample_cells(key: jax.Array, table: Table, num: int, *, stratified: bool = False):
    """``num`` cells drawn from the table's joint: ``(num, D)`` int32 indices.

    ``stratified``: systematic sampling, ``num`` evenly spaced points ``(k + u) / num`` of the
    cumulative distribution with one shared ``u ~ U[0, 1)``. Every cell then appears
    ``num * p(cell)`` times, rounded up or down, in random order: each sample is still drawn
    from the joint, but a batch's cell counts carry (almost) no sampling noise.
    """
    p = np.asarray(table.probabilities, np.float64).reshape(-1)
    cdf = jnp.asarray(np.cumsum(p) / p.sum(), jnp.float32).at[-1].set(1.0)
    if stratified:
        ku, kp = jax.random.split(key)
        points = (jnp.arange(num) + jax.random.uniform(ku)) / num
    else:
        points = jax.random.uniform(key, (num,))
    # inverse CDF: the first cell whose cumulative probability exceeds the point
    flat = jnp.minimum(jnp.searchsorted(cdf, points, side="right"), p.size - 1)
    if stratified:
        flat = jax.random.permutation(kp, flat)
    return jnp.stack(jnp.unravel_index(flat, table.shape), axis=-1).astype(jnp.int32)


def dequantize_cells(key: jax.Array, cells: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Uniform dequantization onto the unit cube: ``x_d = (i_d + u_d) / n_d``."""
    u = jax.random.uniform(key, cells.shape, jnp.float32)
    return (cells.astype(jnp.float32) + u) / jnp.asarray(shape, jnp.float32)


def cell_index_log_volume(shape: Sequence[int]) -> float:
    """``sum_d log n_d``: add it to ``-log p(x)`` (unit scale) for the NLL on the cell-index
    scale, where a density uniform within cells gives exactly ``-log P(cell)``."""
    return float(sum(math.log(n) for n in shape))
