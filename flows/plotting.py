"""Pictures: image grids (PNG) and learning curves (PNG). Matplotlib's Agg backend only."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from flows.workdir import atomic_file


def image_grid(images: np.ndarray, num_bins: int, *, ncols: int | None = None, pad: int = 1):
    """(N, H, W, C) integer levels -> one uint8 grid image, values scaled to 0..255."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    scaled = (images.astype(np.float64) * (255.0 / max(num_bins - 1, 1))).round()
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        grid[y : y + h, x : x + w] = np.clip(scaled[i], 0, 255).astype(np.uint8)
    return grid


def save_image_grid(path, images, num_bins, *, ncols=None, upscale: int | None = None):
    """Writes a PNG grid; small images are upscaled (nearest) to be visible."""
    grid = image_grid(images, num_bins, ncols=ncols)
    if upscale is None:
        upscale = max(1, 512 // max(grid.shape[:2]))
    if grid.shape[-1] == 1:
        grid = grid[..., 0]
    img = Image.fromarray(grid)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    with atomic_file(path) as tmp:
        img.save(tmp, format="PNG")


def plot_learning_curves(path, runs: dict[str, list[dict]], *, title: str = "") -> None:
    """Train and validation bits/dim against step, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, records) in enumerate(runs.items()):
        colour = f"C{i % 10}"
        train = [(r["step"], r["train_bpd"]) for r in records if "train_bpd" in r]
        val = [(r["step"], r["val_bpd"]) for r in records if "val_bpd" in r]
        if train:
            ax.plot(*zip(*train, strict=True), color=colour, alpha=0.6, label=f"{name} train")
        if val:
            ax.plot(*zip(*val, strict=True), "o-", color=colour, ms=3, label=f"{name} validation")
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim")
    ax.set_title(title or "learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_ood_histogram(
    path,
    in_bpd,
    ood_bpd,
    *,
    in_label: str,
    ood_label: str,
    auroc: float,
    title: str = "",
    xlabel: str = "bits/dim per example",
    bins: int = 40,
    log_above: float = 4.0,
) -> None:
    """Overlaid histograms of per-example bits/dim, in-distribution vs out-of-distribution.

    Both use the same ``bins`` bins spanning every finite value of both sets, and show the
    fraction of each set per bin (each histogram sums to 1, so sets of different sizes
    compare). The bins are equal-width, or, when all values are positive and the largest is
    more than ``log_above`` times the smallest, equal in log (the x axis then logarithmic:
    an OOD tail many times the in-distribution values would otherwise squeeze those into a
    bin or two). The legend gives each set's size and mean ± standard error; the AUROC of
    bits/dim as the OOD score is in the legend's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flows.likelihood import mean_and_standard_error

    in_bpd = np.asarray(in_bpd, np.float64).reshape(-1)
    ood_bpd = np.asarray(ood_bpd, np.float64).reshape(-1)
    pooled = np.concatenate([in_bpd, ood_bpd])
    finite = pooled[np.isfinite(pooled)]
    log_x = finite.size > 0 and finite.min() > 0 and finite.max() > log_above * finite.min()
    if log_x:
        edges = np.geomspace(finite.min(), finite.max(), bins + 1)
    else:
        edges = np.histogram_bin_edges(finite, bins=bins)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for values, label, colour in ((in_bpd, in_label, "C0"), (ood_bpd, ood_label, "C3")):
        mean, se = mean_and_standard_error(values)
        ax.hist(
            values,
            bins=edges,
            weights=np.full(values.size, 1.0 / values.size),
            color=colour,
            alpha=0.55,
            label=f"{label} (n={values.size}): mean {mean:.3f} ± {se:.3f}",
        )
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(xlabel + (" (log scale)" if log_x else ""))
    ax.set_ylabel("fraction of examples per bin")
    ax.set_title(title or "bits/dim as an out-of-distribution score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title=f"AUROC (higher bits/dim = OOD) = {auroc:.4f}", title_fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def save_image_rows(path, rows, num_bins, *, blank=None, upscale: int | None = None) -> None:
    """Writes a PNG with one row of images per entry of ``rows`` (each (M, H, W, C) integer
    levels, the same M for every row): image strips such as interpolations or slider
    sweeps, through ``save_image_grid`` with M columns. ``blank`` (optional, one bool per
    image, row-major) marks images to draw empty: white, the colour of the grid's border
    (e.g. decodes that are not finite)."""
    rows = [np.asarray(r) for r in rows]
    if not rows or len({len(r) for r in rows}) != 1 or len(rows[0]) == 0:
        raise ValueError(f"expected rows of equal, non-zero length, got {[len(r) for r in rows]}")
    images = np.concatenate(rows)
    if blank is not None:
        images = np.where(np.reshape(blank, (-1, 1, 1, 1)), num_bins - 1, images)
    save_image_grid(path, images, num_bins, ncols=len(rows[0]), upscale=upscale)
