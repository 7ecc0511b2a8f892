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
