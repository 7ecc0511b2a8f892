"""The toy-table experiment: exact table, counting model and flows, cell by cell.

``run(config)`` builds the table, its counting model, trains the joint flow ``p(x, y)`` and
the label-conditioned flow ``p(x | y)`` on dequantized samples, integrates both flows'
densities over every cell, estimates the joint flow's NLL, and returns a ``Result`` whose
``record`` is the JSON-ready summary and whose ``report()`` is the side-by-side text.

Record fields (masses are flow cell masses by quadrature; errors are max absolute):

* ``total_mass``: the joint flow's mass over all cells (1 if normalised on the cube);
  ``max_cell_error``: against the exact joint; ``zero_cell_mass``: summed over empty cells
  (None when there are none).
* ``nll_bits`` +- ``nll_se``: the joint flow's NLL per record in bits on the cell-index scale
  (``(-log p_unit(x) + sum_d log n_d) / log 2``, summed over dims, not per dim) on
  ``eval.nll_samples`` dequantized samples; ``entropy_bits``: the table's entropy, which a
  density uniform within each cell attains exactly; ``nll_gap_bits`` the difference.
* ``cond_total_mass``: per label, the conditional flow's total mass;
  ``cond_max_cell_error``: its ``p(x | y)`` cells against the exact ones.
* ``posterior_max_error``: Bayes ``p(y | x) = P(x-cell | y) p(y) / sum`` from the conditional
  flow's cell masses and the counted ``p(y)``, against the exact discriminative ``p(y | x)``
  (cells with ``p(x) > 0``); ``posterior_midpoint_max_error``: the same with the conditional
  density at cell midpoints instead of cell masses; ``joint_posterior_max_error``: ``p(y | x)``
  from the joint flow's cell masses.
* ``checks``: each bound of ``config.check`` and whether it holds; ``passed``: all of them.
"""

from __future__ import annotations

import dataclasses
import time
from fractions import Fraction

import numpy as np
from flax import nnx

from flows.errors import ConfigError
from flows.toy import exact, fit, models, quadrature, tables


def make_table(config) -> tables.Table:
    """The table ``config.table`` names: 'gender_age' (the seed table), 'counts' (given
    ``counts`` and optional ``axes`` / ``categories``) or 'random'."""
    name = config.name
    if name == "gender_age":
        return tables.gender_age()
    if name == "counts":
        if not config.counts:
            raise ConfigError("table.name='counts' needs table.counts")
        return tables.from_counts(
            np.asarray(config.counts),
            axes=tuple(config.axes) or None,
            categories=tuple(tuple(c) for c in config.categories) or None,
            name=config.get("label", "counts"),
        )
    if name == "random":
        return tables.random_table(
            config.seed,
            tuple(config.shape),
            zero_cells=config.zero_cells,
            max_count=config.max_count,
        )
    raise ConfigError(f"unknown table.name {name!r}; use 'gender_age', 'counts' or 'random'")


@dataclasses.dataclass
class Result:
    table: tables.Table
    counting: exact.CountingModel
    joint_masses: np.ndarray
    cond_masses: np.ndarray  # P(x-cell | y), table shape
    posterior: np.ndarray  # Bayes p(y | x) from cond_masses and the counted p(y)
    joint_model: nnx.Module
    cond_model: nnx.Module
    record: dict

    def report(self) -> str:
        return format_report(self)


def _max_error(a, b):
    ok = np.isfinite(b)
    return float(np.max(np.abs(np.asarray(a)[ok] - np.asarray(b)[ok])))


def _midpoint_posterior(cond_log_prob, table, counting):
    """Bayes p(y | x) with the conditional density at cell midpoints (never on an edge)."""
    xs_shape = table.shape[:-1]
    mids = [(np.arange(n) + 0.5) / n for n in xs_shape]
    grid = np.stack(np.meshgrid(*mids, indexing="ij"), -1).reshape(-1, len(xs_shape))
    n_y = table.shape[-1]
    x = np.repeat(grid, n_y, axis=0)
    ctx = np.tile(np.eye(n_y, dtype=np.float32), (grid.shape[0], 1))
    lp = cond_log_prob(x, ctx).reshape(*xs_shape, n_y)
    return exact.bayes_posterior(np.exp(lp - lp.max()), counting.label_marginal)


def run(config, log=print) -> Result:
    start = time.perf_counter()
    table = make_table(config.table)
    counting = exact.fit(table)
    n_y = table.shape[-1]
    tc = config.train
    say = log or (lambda *a: None)

    def progress(kind, num_train_steps):
        every = max(num_train_steps // 4, 1)
        last = [0]

        def f(rec):
            if rec["step"] // every > last[0] // every or rec["step"] >= num_train_steps:
                say(
                    f"  {kind} step {rec['step']}: nll {rec['nll_bits']:.4f} bits "
                    f"({rec['seconds']:.1f}s)"
                )
            last[0] = rec["step"]

        return f if log else None

    say(f"training the joint flow p({', '.join(table.axes)}) on {table.name} ...")
    joint = models.joint_flow(table.num_dims, config.model, rngs=nnx.Rngs(tc.seed))
    joint, _ = fit.fit(
        joint,
        table,
        fit.JOINT,
        optim=config.optim,
        num_train_steps=tc.num_train_steps,
        batch_size=tc.batch_size,
        steps_per_call=tc.steps_per_call,
        seed=tc.seed,
        stratified=tc.stratified,
        log=progress("joint", tc.num_train_steps),
    )
    say(f"training the conditional flow p({', '.join(table.axes[:-1])} | {table.axes[-1]}) ...")
    cond = models.conditional_flow(
        table.num_dims - 1, n_y, config.model, rngs=nnx.Rngs(tc.seed + 1)
    )
    cond, _ = fit.fit(
        cond,
        table,
        fit.CONDITIONAL,
        optim=config.optim,
        num_train_steps=tc.conditional_num_train_steps,
        batch_size=tc.batch_size,
        steps_per_call=tc.steps_per_call,
        seed=tc.seed + 1,
        stratified=tc.stratified,
        log=progress("conditional", tc.conditional_num_train_steps),
    )
    train_seconds = time.perf_counter() - start

    ec = config.eval
    joint_lp, cond_lp = models.batched_log_prob(joint), models.batched_log_prob(cond)
    joint_masses, qinfo = quadrature.flow_cell_masses(
        joint, table.shape, log_prob=joint_lp, tol=ec.quadrature_tol, nodes=ec.quadrature_nodes
    )
    per_label = quadrature.flow_cell_masses(
        cond,
        table.shape[:-1],
        contexts=np.eye(n_y, dtype=np.float32),
        log_prob=cond_lp,
        tol=ec.conditional_quadrature_tol,
        nodes=ec.quadrature_nodes,
    )
    cond_masses = np.stack([m for m, _ in per_label], axis=-1)
    posterior = exact.bayes_posterior(cond_masses, counting.label_marginal)
    nll, nll_se = fit.evaluate_nll(
        joint, table, fit.JOINT, num_samples=ec.nll_samples, seed=ec.seed, log_prob=joint_lp
    )
    cnll, cnll_se = fit.evaluate_nll(
        cond,
        table,
        fit.CONDITIONAL,
        num_samples=ec.nll_samples,
        seed=ec.seed + 1,
        log_prob=cond_lp,
    )

    zero = counting.counts == 0
    entropy = counting.entropy_bits
    x_seen = counting.x_marginal > 0
    disc = np.where(x_seen[..., None], counting.discriminative, np.nan)
    rec = dict(
        table=table.name,
        shape=list(table.shape),
        total_mass=float(joint_masses.sum()),
        max_cell_error=_max_error(joint_masses, counting.joint),
        zero_cell_mass=float(joint_masses[zero].sum()) if zero.any() else None,
        nll_bits=nll,
        nll_se=nll_se,
        entropy_bits=entropy,
        nll_gap_bits=nll - entropy,
        nll_samples=int(ec.nll_samples),
        cond_total_mass=[float(m.sum()) for m, _ in per_label],
        cond_max_cell_error=_max_error(cond_masses, counting.generative),
        cond_zero_cell_mass=float(cond_masses[zero].sum()) if zero.any() else None,
        cond_nll_bits=cnll,
        cond_nll_se=cnll_se,
        cond_entropy_bits=counting.conditional_entropy_bits,
        posterior_max_error=_max_error(posterior, disc),
        posterior_midpoint_max_error=_max_error(
            _midpoint_posterior(cond_lp, table, counting), disc
        ),
        joint_posterior_max_error=_max_error(
            exact.bayes_posterior(joint_masses, np.ones(n_y)), disc
        ),
        quadrature_error_estimate=max(
            [qinfo["error_estimate"]] + [i["error_estimate"] for _, i in per_label]
        ),
        quadrature_evaluations=qinfo["evaluations"] + sum(i["evaluations"] for _, i in per_label),
        train_steps=[int(tc.num_train_steps), int(tc.conditional_num_train_steps)],
        train_seconds=round(train_seconds, 1),
    )
    ck = config.check
    checks = dict(
        total_mass=abs(rec["total_mass"] - 1) <= ck.total_mass_tol,
        cells=rec["max_cell_error"] <= ck.cell_tol,
        zero_cells=rec["zero_cell_mass"] is None or rec["zero_cell_mass"] <= ck.zero_cell_tol,
        nll_lower=nll >= entropy - 3 * nll_se,
        nll_upper=nll <= entropy + ck.nll_gap_bits,
        cond_total_mass=all(abs(t - 1) <= ck.total_mass_tol for t in rec["cond_total_mass"]),
        cond_cells=rec["cond_max_cell_error"] <= ck.cell_tol,
        posterior=rec["posterior_max_error"] <= ck.cell_tol,
    )
    rec["checks"] = checks
    rec["passed"] = all(checks.values())
    rec["seconds"] = round(time.perf_counter() - start, 1)
    return Result(table, counting, joint_masses, cond_masses, posterior, joint, cond, rec)


# ----------------------------------------------------------------------------- printing


def _frac(num, den) -> str:
    return "undef" if den == 0 else str(Fraction(int(num), int(den)))


def _table_block(title, headers, rows):
    """Left column of names, right-aligned value columns."""
    w0 = max(len(title), *(len(r[0]) + 2 for r in rows))
    widths = [max(len(h), *(len(r[k + 1]) for r in rows)) for k, h in enumerate(headers)]
    out = [title.ljust(w0) + "".join(f"  {h:>{w}}" for h, w in zip(headers, widths, strict=True))]
    for r in rows:
        cols = "".join(f"  {v:>{w}}" for v, w in zip(r[1:], widths, strict=True))
        out.append(("  " + r[0]).ljust(w0) + cols)
    return out


def format_report(r: Result) -> str:
    t, c, rec = r.table, r.counting, r.record
    n = t.counts
    n_x, n_y, total = n.sum(axis=-1), n.sum(axis=tuple(range(t.num_dims - 1))), t.total
    label, xs = t.axes[-1], ", ".join(t.axes[:-1])
    cells = [tuple(int(i) for i in idx) for idx in np.ndindex(*t.shape)]
    axes = " x ".join(f"{a} ({', '.join(cs)})" for a, cs in zip(t.axes, t.categories, strict=True))
    lines = [f"table {t.name}: {axes}; {total} records; label: {label}", ""]

    rows = [
        (t.cell_name(cl), _frac(n[cl], total), f"{c.joint[cl]:.4f}", f"{r.joint_masses[cl]:.5f}")
        for cl in cells
    ]
    rows.append(("total", "1", f"{c.joint.sum():.4f}", f"{rec['total_mass']:.6f}"))
    lines += _table_block(
        f"joint p({', '.join(t.axes)})", ("exact", "counting", "joint flow"), rows
    )
    lines.append("")

    rows = [
        (
            f"{t.cell_name(cl[:-1])} | {t.categories[-1][cl[-1]]}",
            _frac(n[cl], n_y[cl[-1]]),
            f"{c.generative[cl]:.4f}",
            f"{r.cond_masses[cl]:.5f}",
        )
        for cl in cells
    ]
    for k, tot in enumerate(rec["cond_total_mass"]):
        rows.append((f"total | {t.categories[-1][k]}", "1", "1.0000", f"{tot:.6f}"))
    lines += _table_block(f"p({xs} | {label})", ("exact", "counting", "cond flow"), rows)
    lines.append("")

    joint_post = exact.bayes_posterior(r.joint_masses, np.ones(t.shape[-1]))
    rows = [
        (
            f"{t.categories[-1][cl[-1]]} | {t.cell_name(cl[:-1])}",
            _frac(n[cl], n_x[cl[:-1]]),
            f"{c.bayes[cl]:.4f}",
            f"{r.posterior[cl]:.5f}",
            f"{joint_post[cl]:.5f}",
        )
        for cl in cells
    ]
    lines += _table_block(
        f"p({label} | {xs})",
        ("exact", "counting Bayes", "cond flow Bayes", "joint flow"),
        rows,
    )
    zero = rec["zero_cell_mass"]
    lines += [
        "",
        f"joint flow NLL: {rec['nll_bits']:.4f} +- {rec['nll_se']:.4f} bits per record "
        f"(-log2 of the density on the cell-index scale, all {t.num_dims} dims together, "
        f"{rec['nll_samples']} dequantized samples); table entropy {rec['entropy_bits']:.4f} bits, "
        f"gap {rec['nll_gap_bits']:+.4f}",
        f"cond flow NLL: {rec['cond_nll_bits']:.4f} +- {rec['cond_nll_se']:.4f} bits; "
        f"H({xs} | {label}) = {rec['cond_entropy_bits']:.4f} bits",
        f"max |error|: joint cells {rec['max_cell_error']:.5f}, p(x|y) cells "
        f"{rec['cond_max_cell_error']:.5f}, Bayes p(y|x) {rec['posterior_max_error']:.5f} "
        f"(at cell midpoints {rec['posterior_midpoint_max_error']:.5f}); zero-cell mass "
        + ("none" if zero is None else f"{zero:.5f}"),
        f"cell masses by adaptive Gauss-Legendre cubature: error estimate "
        f"{rec['quadrature_error_estimate']:.1e}, {rec['quadrature_evaluations']} density "
        f"evaluations",
        "checks: " + ", ".join(f"{k} {'ok' if v else 'FAIL'}" for k, v in rec["checks"].items()),
    ]
    return "\n".join(lines)
