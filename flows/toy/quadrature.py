"""Cell masses of a flow's density by adaptive cubature: ``P(cell) = int_cell p(x) dx``.

A flow fitted to a piecewise-constant density changes steeply near cell edges (narrow spline
bins there) and has kinks wherever a spline has a knot (a rational-quadratic spline is C^1, so
its density is only C^0), at places the flow chose. A fixed rule would have to be very fine
everywhere, so the integral is adaptive:

* every cell starts as a grid of boxes, ``initial_splits`` per axis, the boxes at the cell's
  edges further split geometrically toward them (``edge_levels`` levels of ratio
  ``edge_ratio``): a fitted flow's steepest features hug the cell edges, and a feature
  narrower than the nodes' spacing is invisible to any rule;
* each box gets the tensor-product Gauss-Legendre rule with ``nodes`` points per axis (the
  estimate), and for each axis ``d`` the same rule with ``nodes // 2`` points along ``d``
  only; ``|fine - coarse_d|`` is the box's error estimate along ``d`` (their sum, an
  overestimate of the fine rule's error, is the box's error);
* while the estimated errors add up to more than ``tol``, the boxes with the largest errors
  (those that carry all but ``tol / 2`` of it) are halved along the axes that carry at least
  half of their largest directional error. Features aligned with an axis (a steep change
  across a cell edge) are then cut by thin slabs instead of ever smaller squares.

Boxes never straddle a cell edge and no node lies on one, so each cell's mass is its own
integral, and the refinement concentrates where the density is steep (typically the cell edges
and the faces of the cube). The rule integrates the density the flow defines, the model's own
exact cell mass, not a count of samples.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

import jax
import numpy as np

from flows.toy.models import batched_log_prob


@functools.lru_cache(maxsize=16)
def _box_rules(nodes: int, dims: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tensor Gauss-Legendre rules on [0, 1]^D as ``(points (m, D), weights (m,))``: first
    ``nodes`` points on every axis, then for each axis d the same with ``nodes // 2`` points
    on axis d only (the comparisons that say along which axis a box needs splitting)."""

    def gl(n):
        g, w = np.polynomial.legendre.leggauss(n)
        return (g + 1) / 2, w / 2

    fine, coarse = gl(nodes), gl(max(nodes // 2, 1))
    rules = []
    for coarse_axis in [None, *range(dims)]:
        per_axis = [coarse if d == coarse_axis else fine for d in range(dims)]
        pts = np.array(list(itertools.product(*[g for g, _ in per_axis])))
        wts = np.prod(np.array(list(itertools.product(*[w for _, w in per_axis]))), axis=1)
        rules.append((pts.reshape(-1, dims), wts))
    return rules


class _Evaluator:
    def __init__(self, log_prob, dims, nodes):
        self.log_prob = log_prob
        self.rules = _box_rules(nodes, dims)
        self.evaluations = 0

    def __call__(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fine estimate ``(boxes,)`` and per-axis error estimates ``(boxes, D)`` of the
        integral over each box ``[lo, hi]``."""
        vol = np.prod(hi - lo, axis=1)
        sizes = [w.size for _, w in self.rules]
        pts = np.concatenate([p for p, _ in self.rules])
        x = lo[:, None, :] + (hi - lo)[:, None, :] * pts[None]
        self.evaluations += x.shape[0] * x.shape[1]
        dens = np.exp(np.asarray(self.log_prob(x.reshape(-1, x.shape[-1])), np.float64))
        dens = dens.reshape(x.shape[:2])
        est, s = [], 0
        for (_, w), m in zip(self.rules, sizes, strict=True):
            est.append(vol * (dens[:, s : s + m] @ w))
            s += m
        return est[0], np.abs(np.stack(est[1:], axis=1) - est[0][:, None])


def _bisect(lo, hi, axes):
    """Halve each box along every axis flagged in ``axes`` ``(boxes, D)``; returns the
    children's ``lo``, ``hi`` and the index of each child's parent box."""
    parent = np.arange(lo.shape[0])
    for d in range(lo.shape[1]):
        f = axes[:, d]
        mid = (lo[f, d] + hi[f, d]) / 2
        lo_a, hi_a, lo_b, hi_b = lo[f].copy(), hi[f].copy(), lo[f].copy(), hi[f].copy()
        hi_a[:, d], lo_b[:, d] = mid, mid
        lo = np.concatenate([lo[~f], lo_a, lo_b])
        hi = np.concatenate([hi[~f], hi_a, hi_b])
        parent = np.concatenate([parent[~f], parent[f], parent[f]])
        axes = np.concatenate([axes[~f], axes[f], axes[f]])
    return lo, hi, parent


def cell_breakpoints(initial_splits: int, edge_levels: int, edge_ratio: float) -> np.ndarray:
    """Initial panel breakpoints of one cell, as fractions of it: ``initial_splits`` even
    panels, the two end panels further split geometrically toward the cell's edges
    (``edge_levels`` panels of ratio ``edge_ratio`` each, the smallest
    ``edge_ratio**edge_levels / initial_splits`` wide)."""
    even = np.linspace(0.0, 1.0, initial_splits + 1)
    graded = even[1] * edge_ratio ** np.arange(1, edge_levels + 1)
    return np.unique(np.concatenate([even, graded, 1.0 - graded]))


def cell_masses(
    log_prob: Callable[[jax.Array], jax.Array],
    shape: Sequence[int],
    *,
    tol: float = 1e-5,
    nodes: int = 8,
    initial_splits: int = 8,
    edge_levels: int = 5,
    edge_ratio: float = 0.1,
    max_rounds: int = 40,
    max_boxes: int = 500_000,
) -> tuple[np.ndarray, dict]:
    """Masses (float64, ``shape``) of the unit-cube density ``exp(log_prob(x))`` over the
    cells of a table of that shape, and ``info``: ``error_estimate`` (sum of the boxes'
    estimates), ``boxes``, ``evaluations``, ``rounds``.

    ``log_prob`` maps ``(batch, D)`` points in [0, 1]^D (any batch size) to ``(batch,)`` log
    densities, e.g. ``models.batched_log_prob(model)``. The initial boxes of each cell are
    the tensor product of ``cell_breakpoints``: graded toward the cell's edges, where a
    fitted flow's density changes fastest (a feature narrower than the nodes' spacing would
    be invisible to both rules and so to the error estimate).
    """
    shape = tuple(int(n) for n in shape)
    dims = len(shape)
    evaluate = _Evaluator(log_prob, dims, nodes)
    frac = cell_breakpoints(initial_splits, edge_levels, edge_ratio)
    per_axis_lo = [(np.arange(n)[:, None] + frac[None, :-1]).reshape(-1) / n for n in shape]
    per_axis_hi = [(np.arange(n)[:, None] + frac[None, 1:]).reshape(-1) / n for n in shape]
    per_axis_cell = [np.repeat(np.arange(n), frac.size - 1) for n in shape]

    def grid(arrays):
        return np.stack(np.meshgrid(*arrays, indexing="ij"), -1).reshape(-1, dims)

    lo, hi = grid(per_axis_lo), grid(per_axis_hi)
    cell = np.ravel_multi_index(tuple(grid(per_axis_cell).T), shape)
    value, axis_err = evaluate(lo, hi)
    rounds = 0
    while axis_err.sum() > tol and rounds < max_rounds and lo.shape[0] < max_boxes:
        rounds += 1
        err = axis_err.sum(axis=1)
        order = np.argsort(err)  # ascending: keep the smallest errors up to tol / 2
        keep = order[np.cumsum(err[order]) <= tol / 2]
        split = np.setdiff1d(order, keep)
        # split along the axes that carry most of a box's error (all of them for D = 1)
        axes = axis_err[split] >= 0.5 * axis_err[split].max(axis=1, keepdims=True)
        clo, chi, parent = _bisect(lo[split], hi[split], axes)
        cval, cerr = evaluate(clo, chi)
        lo, hi = np.concatenate([lo[keep], clo]), np.concatenate([hi[keep], chi])
        value = np.concatenate([value[keep], cval])
        axis_err = np.concatenate([axis_err[keep], cerr])
        cell = np.concatenate([cell[keep], cell[split][parent]])
    err = axis_err.sum(axis=1)
    masses = np.bincount(cell, weights=value, minlength=int(np.prod(shape))).reshape(shape)
    info = dict(
        error_estimate=float(err.sum()),
        boxes=int(lo.shape[0]),
        evaluations=int(evaluate.evaluations),
        rounds=rounds,
    )
    return masses, info


def flow_cell_masses(model, shape, *, contexts=None, log_prob=None, **kwargs):
    """Cell masses of a toy flow over the cells of ``shape``.

    Without ``contexts``: ``(masses, info)``. With ``contexts`` (``(k, F)``, e.g. the one-hot
    labels): a list of ``k`` such pairs, one per context vector, used at every point.
    ``log_prob``: a ``models.batched_log_prob(model)`` to reuse (one compilation).
    Other keyword arguments go to ``cell_masses``.
    """
    f = log_prob or batched_log_prob(model)
    if contexts is None:
        return cell_masses(f, shape, **kwargs)
    contexts = np.asarray(contexts, np.float32)

    def with_context(c):
        return lambda x: f(x, np.broadcast_to(c, (x.shape[0], c.shape[-1])))

    return [cell_masses(with_context(c), shape, **kwargs) for c in contexts]
