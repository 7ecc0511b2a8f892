"""Pictures: labelled image grids (PNG, pillow) and learning curves and histograms (PNG,
matplotlib's Agg backend)."""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import numpy as np

from flows.workdir import atomic_file


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


def plot_guidance_sweep(path, rows: list[dict], *, title: str = "") -> None:
    """What classifier-free guidance costs in bits and buys in class fidelity: for each
    guidance weight (a row of ``flows.sample_scores.guidance_sweep``, a point labelled w),
    against the accuracy of the model's own Bayes classifier on the samples: the test
    split's bits/dim under the guided model (the cost), the samples' bits/dim under the
    unguided model, and the samples as drawn under the guided model (at temperature 1 its
    entropy); error bars are one standard error each way. The bits/dim axis is logarithmic
    when the values span more than a factor of 10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    acc = [r["sample_accuracy"] for r in rows]
    acc_se = [r["sample_accuracy_se"] for r in rows]
    series = (
        ("test_guided_bits_per_dim", "test split under the guided model p_w(x|y)", "C3", "o-"),
        ("sample_bits_per_dim", "samples under the unguided model p(x|y)", "C0", "s--"),
        (
            "continuous_sample_guided_bits_per_dim",
            "samples as drawn (unquantized) under p_w",
            "C2",
            "^:",
        ),
    )
    values = []
    for i, (field, label, colour, style) in enumerate(series):
        bpd = [r[field] for r in rows]
        values += bpd
        ax.errorbar(
            acc,
            bpd,
            xerr=acc_se,
            yerr=[r[f"{field}_se"] for r in rows],
            fmt=style,
            color=colour,
            ms=5,
            capsize=2,
            label=label,
        )
        for j, (r, x, y) in enumerate(zip(rows, acc, bpd, strict=True)):
            ax.annotate(
                f"w={r['guidance']:g}", (x, y), textcoords="offset points",
                xytext=(6, 6 if (i + j) % 2 else -11), fontsize=7, color=colour,
            )  # fmt: skip
    finite = [v for v in values if np.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) > 10 * min(finite):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("accuracy of the model's own (unguided) Bayes classifier on the samples")
    ax.set_ylabel("bits/dim")
    ax.set_title(title or "classifier-free guidance: bits/dim against sample accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


# -- labelled image grids ----------------------------------------------------------------------
#
# Every picture of images (the training's sample grids, experiments.sample's grids and
# experiments.latents' strips) is drawn by ``grid_picture`` with one layout:
#
#   title (optional, one line, left)
#   corner | header of group 1 | header of group 2 | ...      <- the header band
#   label  | cell cell cell    | cell cell         | ...      <- one row per label
#   label  | cell cell cell    | cell cell         | ...
#
# Each image is upscaled (nearest) by the integer ``scale`` that makes its longer side at
# least ``MIN_CELL`` pixels (8x8 digits: 5, 40 pixels), so the labels, in pillow's default
# font at ``FONT_SIZE``, are legible next to it. Cells are ``PAD`` pixels apart, column
# groups ``GAP`` pixels apart (a visible white gap), and a group is as wide as its cells or
# its header, whichever is wider (the cells centred under it). Rows may be shorter than the
# columns (their last cells are left white); cells marked ``blank`` are white too.

MIN_CELL = 40  # pixels: the longer side of an upscaled image is at least this
FONT_SIZE = 13  # pixels; pillow's default (FreeType) font
PAD = 2  # pixels between the cells of a group, and between rows
GAP = 16  # pixels between column groups
MARGIN = 6  # pixels around everything
LABEL_SEP = 6  # pixels between the row labels and the first cells
LINE_SEP = 4  # pixels below the title line and below the header band
GRID_TEXT_KEY = "grid"  # the PNG text chunk that describes a grid's structure (JSON)


@functools.lru_cache(maxsize=1)
def _font():
    from PIL import ImageFont

    return ImageFont.load_default(size=FONT_SIZE)


def _text_width(text: str | None) -> int:
    return math.ceil(_font().getlength(text)) if text else 0


def _line_height() -> int:
    ascent, descent = _font().getmetrics()
    return ascent + descent


@dataclasses.dataclass(frozen=True)
class GridLayout:
    """Where ``grid_picture`` puts everything, in pixels of the picture (x right, y down).

    Attributes:
      width, height: the picture's size.
      scale: the integer upscaling of every image; cell: (height, width) of one cell.
      title_y: top of the title line (None without a title).
      band: (top, bottom) of the header band (None without headers and corner).
      labels_x: (left, right) of the row-label column (None without row labels or corner).
      groups_x: (left, right) of each column group (its header centred over it).
      cells_x: left of each column's cells, all groups in order.
      rows_y: top of each row's cells.
    """

    width: int
    height: int
    scale: int
    cell: tuple[int, int]
    title_y: int | None
    band: tuple[int, int] | None
    labels_x: tuple[int, int] | None
    groups_x: tuple[tuple[int, int], ...]
    cells_x: tuple[int, ...]
    rows_y: tuple[int, ...]


def grid_layout(
    num_rows: int,
    image_shape,
    groups,
    *,
    row_labels=None,
    corner: str | None = None,
    title: str | None = None,
    scale: int | None = None,
) -> GridLayout:
    """The layout of ``num_rows`` rows of images of ``image_shape`` ((H, W, ...)) in the
    column ``groups``, ``(header or None, number of columns)`` from left to right."""
    h, w = int(image_shape[0]), int(image_shape[1])
    scale = int(scale or max(1, math.ceil(MIN_CELL / max(h, w))))
    ch, cw = h * scale, w * scale
    line = _line_height()
    x = MARGIN
    labels_x = None
    if row_labels is not None or corner:
        label_width = max(_text_width(t) for t in [*(row_labels or []), corner or ""])
        labels_x = (x, x + label_width)
        x += label_width + LABEL_SEP
    groups_x, cells_x = [], []
    for header, ncols in groups:
        cells_width = ncols * cw + (ncols - 1) * PAD
        width = max(cells_width, _text_width(header))
        offset = x + (width - cells_width) // 2
        groups_x.append((x, x + width))
        cells_x.extend(offset + k * (cw + PAD) for k in range(ncols))
        x += width + GAP
    right = x - GAP
    y, title_y, band = MARGIN, None, None
    if title:
        title_y, y = y, y + line + LINE_SEP
    if corner or any(header for header, _ in groups):
        band, y = (y, y + line), y + line + LINE_SEP
    rows_y = tuple(y + r * (ch + PAD) for r in range(num_rows))
    bottom = y + num_rows * ch + (num_rows - 1) * PAD
    return GridLayout(
        width=max(right, MARGIN + _text_width(title)) + MARGIN,
        height=bottom + MARGIN,
        scale=scale,
        cell=(ch, cw),
        title_y=title_y,
        band=band,
        labels_x=labels_x,
        groups_x=tuple(groups_x),
        cells_x=tuple(cells_x),
        rows_y=rows_y,
    )


def rows_of(images, ncols: int | None = None) -> list[np.ndarray]:
    """(N, H, W, C) images as rows of ``ncols`` (default: a square-ish grid, ``ceil(sqrt N)``
    columns); the last row may be shorter."""
    images = np.asarray(images)
    ncols = ncols or math.ceil(math.sqrt(len(images)))
    return [images[i : i + ncols] for i in range(0, len(images), ncols)]


def _to_pixels(images, num_bins: int) -> np.ndarray:
    """Integer levels 0..K-1 -> uint8 0..255."""
    scaled = np.asarray(images, np.float64) * (255.0 / max(num_bins - 1, 1))
    return np.clip(scaled.round(), 0, 255).astype(np.uint8)


def _groups(rows, groups) -> list[tuple[str | None, int]]:
    """The column groups of ``grid_picture`` (default: one, as wide as the longest row),
    checked against the rows."""
    lengths = [len(r) for r in rows]
    if not lengths or min(lengths) == 0:
        raise ValueError(f"expected non-empty rows of images, got {lengths}")
    groups = [(header, int(n)) for header, n in (groups or [(None, max(lengths))])]
    ncols = sum(n for _, n in groups)
    if max(lengths) > ncols:
        raise ValueError(f"a row of {max(lengths)} images, more than the {ncols} columns {groups}")
    return groups


def grid_picture(
    rows,
    num_bins: int,
    *,
    groups=None,
    row_labels=None,
    corner: str | None = None,
    title: str | None = None,
    blank=None,
    scale: int | None = None,
) -> np.ndarray:
    """A labelled picture of images (the layout of ``grid_layout``): uint8 (height, width)
    for one-channel images, (height, width, 3) for three.

    Args:
      rows: a sequence of (M_r, H, W, C) integer levels (0..K-1, K = ``num_bins``), one per
        row; a row shorter than the columns leaves its last cells white.
      groups: the column groups, ``(header or None, number of columns)`` from left to right
        (default: one group, no header, as many columns as the longest row); e.g.
        ``[("T=0.5", 2), ("T=1", 2)]``.
      row_labels: one string per row, drawn at the row's left (e.g. its class);
        ``corner``: over them, in the header band, what they are (e.g. ``"class"``).
      title: one line above everything.
      blank: optional, per row one bool per image: images to draw white (e.g. decodes that
        are not finite).
    """
    from PIL import Image, ImageDraw

    rows = [np.asarray(r) for r in rows]
    groups = _groups(rows, groups)
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    image_shape = rows[0].shape[1:]
    layout = grid_layout(
        len(rows),
        image_shape,
        groups,
        row_labels=row_labels,
        corner=corner,
        title=title,
        scale=scale,
    )
    channels = image_shape[-1]
    if channels not in (1, 3):
        raise ValueError(f"expected images with 1 or 3 channels, got shape {image_shape}")
    canvas = np.full((layout.height, layout.width, channels), 255, np.uint8)
    ch, cw = layout.cell
    for r, row in enumerate(rows):
        pixels = _to_pixels(row, num_bins).repeat(layout.scale, 1).repeat(layout.scale, 2)
        for k, cell in enumerate(pixels):
            if blank is not None and blank[r][k]:
                continue
            y, x = layout.rows_y[r], layout.cells_x[k]
            canvas[y : y + ch, x : x + cw] = cell
    picture = Image.fromarray(canvas[..., 0] if channels == 1 else canvas)
    draw, font, ink = ImageDraw.Draw(picture), _font(), 0 if channels == 1 else (0, 0, 0)
    line = _line_height()
    if title:
        draw.text((MARGIN, layout.title_y), title, font=font, fill=ink)
    if layout.band is not None:
        top = layout.band[0]
        for (header, _), (left, right) in zip(groups, layout.groups_x, strict=True):
            if header:
                x = left + (right - left - _text_width(header)) // 2
                draw.text((x, top), header, font=font, fill=ink)
        if corner:
            draw.text((layout.labels_x[1] - _text_width(corner), top), corner, font=font, fill=ink)
    for label, y in zip(row_labels or [], layout.rows_y, strict=False):
        x = layout.labels_x[1] - _text_width(label)
        draw.text((x, y + (ch - line) // 2), label, font=font, fill=ink)
    return np.asarray(picture)


def save_grid(path, rows, num_bins: int, **labels) -> np.ndarray:
    """Writes ``grid_picture(rows, num_bins, **labels)`` as a PNG and returns it. The PNG's
    text chunk ``GRID_TEXT_KEY`` records the structure as JSON: ``rows`` (how many),
    ``columns`` and ``headers`` (per group), ``row_labels``, ``corner`` and ``title``."""
    from PIL import Image, PngImagePlugin

    rows = [np.asarray(r) for r in rows]
    picture = grid_picture(rows, num_bins, **labels)
    groups = _groups(rows, labels.get("groups"))
    structure = {
        "rows": len(rows),
        "columns": [n for _, n in groups],
        "headers": [header for header, _ in groups],
        "row_labels": None if labels.get("row_labels") is None else list(labels["row_labels"]),
        "corner": labels.get("corner"),
        "title": labels.get("title"),
    }
    info = PngImagePlugin.PngInfo()
    info.add_text(GRID_TEXT_KEY, json.dumps(structure))
    with atomic_file(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG", pnginfo=info)
    return picture
