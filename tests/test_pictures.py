"""The layout of every picture of images (``flows.plotting.grid_picture``): the header band,
the gaps between column groups, one row per label, the upscaled cells and their pixel sizes.

The images are drawn at known levels (cells of one level each, or an image's own pixels), so
every cell of a picture is checked pixel for pixel where the layout puts it; the labels are
checked by where their ink is. No JAX: these run in a second.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from flows import plotting

K = 17  # the digits' levels: level v is drawn at round(v * 255 / 16)
WHITE = 255
INK = 128  # text is black; anything darker than this is ink (or a dark cell)


def _cells(num_rows, num_cols, level=0, shape=(8, 8, 1)):
    """``num_rows`` rows of ``num_cols`` images of one level each (default 0: black)."""
    return [np.full((num_cols, *shape), level, np.int64) for _ in range(num_rows)]


def _class_grid():
    """Ten classes (rows), two temperatures (groups) of two samples each, as
    experiments.sample --class_grid draws them; every image has its own level pattern."""
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, K, (4, 8, 8, 1)) for _ in range(10)]
    labels = dict(
        groups=[("T=0.5", 2), ("T=1", 2)],
        row_labels=[str(y) for y in range(10)],
        corner="class",
    )
    return rows, labels


def test_class_grid_cells_are_the_images_upscaled_where_the_layout_puts_them():
    rows, labels = _class_grid()
    picture = plotting.grid_picture(rows, K, **labels)
    layout = plotting.grid_layout(10, (8, 8, 1), labels["groups"], **_text(labels))
    # 8x8 digits are upscaled 5 times: 40-pixel cells, legible next to 13-pixel text.
    assert layout.scale == 5 and layout.cell == (40, 40)
    assert picture.dtype == np.uint8 and picture.shape == (layout.height, layout.width)
    assert len(layout.rows_y) == 10 and len(layout.cells_x) == 4
    for r, row in enumerate(rows):
        for k, image in enumerate(row):
            y, x = layout.rows_y[r], layout.cells_x[k]
            want = np.round(image[..., 0] * 255 / 16).repeat(5, 0).repeat(5, 1)
            np.testing.assert_array_equal(picture[y : y + 40, x : x + 40], want)


def _text(labels):
    return {k: v for k, v in labels.items() if k in ("row_labels", "corner", "title")}


def test_pixel_sizes_follow_the_layout_rule():
    """Width: margin, label column, gap to the cells, the groups (each as wide as its cells
    or its header) with GAP between them, margin; height: margin, header band, the rows."""
    rows, labels = _class_grid()
    layout = plotting.grid_layout(10, (8, 8, 1), labels["groups"], **_text(labels))
    label_width = layout.labels_x[1] - layout.labels_x[0]
    assert label_width > 0
    group = 2 * 40 + plotting.PAD  # both headers are narrower than two cells
    m = plotting.MARGIN
    assert layout.width == m + label_width + plotting.LABEL_SEP + 2 * group + plotting.GAP + m
    band = layout.band[1] - layout.band[0]
    assert band >= plotting.FONT_SIZE
    rows_height = 10 * 40 + 9 * plotting.PAD
    assert layout.height == m + band + plotting.LINE_SEP + rows_height + m
    # Larger images are upscaled less: 28x28 twice (56 pixels), 64x64 not at all.
    assert plotting.grid_layout(1, (28, 28, 1), [(None, 1)]).cell == (56, 56)
    assert plotting.grid_layout(1, (64, 64, 3), [(None, 1)]).cell == (64, 64)


def test_header_band_has_each_groups_header_and_the_corner():
    rows, labels = _class_grid()
    picture = plotting.grid_picture(rows, K, **labels)
    layout = plotting.grid_layout(10, (8, 8, 1), labels["groups"], **_text(labels))
    top, bottom = layout.band
    assert bottom <= layout.rows_y[0]  # the band is above the first row of cells
    for left, right in layout.groups_x:  # a header over each group
        assert (picture[top:bottom, left:right] < INK).any()
    corner = picture[top:bottom, layout.labels_x[0] : layout.labels_x[1]]
    assert (corner < INK).any()
    # Nothing else is drawn in the band: between the groups and in the margins, white.
    gap = picture[top:bottom, layout.groups_x[0][1] : layout.groups_x[1][0]]
    assert (gap == WHITE).all()
    assert (picture[: plotting.MARGIN] == WHITE).all()
    # The two headers read differently ("T=0.5", "T=1"): different ink.
    ink = [picture[top:bottom, a:b] < INK for a, b in layout.groups_x]
    assert ink[0].sum() != ink[1].sum()


def test_groups_are_separated_by_a_white_gap():
    picture = plotting.grid_picture(_cells(3, 4), K, groups=[("T=0.5", 2), ("T=1", 2)])
    layout = plotting.grid_layout(3, (8, 8, 1), [("T=0.5", 2), ("T=1", 2)])
    end_of_first = layout.cells_x[1] + 40
    start_of_second = layout.cells_x[2]
    assert start_of_second - end_of_first >= plotting.GAP
    top, bottom = layout.rows_y[0], layout.rows_y[-1] + 40
    assert (picture[top:bottom, end_of_first:start_of_second] == WHITE).all()
    # Inside a group the cells are PAD apart only.
    assert layout.cells_x[1] - (layout.cells_x[0] + 40) == plotting.PAD
    # Read across the middle of the first row: dark runs of the four cells, two of them
    # then a gap wider than the others.
    dark = picture[top + 20] < INK
    edges = np.flatnonzero(np.diff(dark.astype(int)))
    runs = list(zip(edges[::2] + 1, edges[1::2] + 1, strict=True))
    assert [b - a for a, b in runs] == [40, 40, 40, 40]
    spaces = [runs[i + 1][0] - runs[i][1] for i in range(3)]
    assert spaces[0] == spaces[2] == plotting.PAD and spaces[1] >= plotting.GAP


def test_one_row_per_class_with_its_label_at_the_left():
    rows, labels = _class_grid()
    picture = plotting.grid_picture(rows, K, **labels)
    layout = plotting.grid_layout(10, (8, 8, 1), labels["groups"], **_text(labels))
    left, right = layout.labels_x
    assert right < layout.cells_x[0]
    label_ink = []
    for y in layout.rows_y:
        ink = picture[y : y + 40, left:right] < INK
        assert ink.any()  # the row's class
        label_ink.append(ink)
    # Ten different labels: ten different inks ("0" .. "9").
    assert len({ink.tobytes() for ink in label_ink}) == 10
    # Down the first column of cells: ten cells of 40 pixels, PAD apart.
    names = labels["row_labels"]
    one = plotting.grid_picture(_cells(10, 1), K, row_labels=names)
    column = one[:, plotting.grid_layout(10, (8, 8, 1), [(None, 1)], row_labels=names).cells_x[0]]
    dark = np.flatnonzero(np.diff((column < INK).astype(int)))
    assert len(dark) == 2 * 10 and set(np.diff(dark)[::2]) == {40}


def test_a_header_wider_than_its_cells_widens_its_group():
    groups = [("alpha=-0.5", 1), ("alpha=1", 1)]
    layout = plotting.grid_layout(2, (8, 8, 1), groups)
    picture = plotting.grid_picture(_cells(2, 2), K, groups=groups)
    (a0, a1), (b0, b1) = layout.groups_x
    assert a1 - a0 > 40 and b0 - a1 == plotting.GAP
    # The header's ink stays inside its group, and the cell is centred under it.
    top, bottom = layout.band
    ink = np.flatnonzero((picture[top:bottom] < INK).any(axis=0))
    assert ink.min() >= a0 and ink.max() < b1
    assert abs((layout.cells_x[0] - a0) - (a1 - layout.cells_x[0] - 40)) <= 1


def test_title_above_the_header_band_and_wider_than_the_grid():
    title = "samples of the selected parameters (ema, step 20)"
    layout = plotting.grid_layout(1, (8, 8, 1), [("T=0.7", 2)], title=title)
    picture = plotting.grid_picture(_cells(1, 2), K, groups=[("T=0.7", 2)], title=title)
    assert layout.title_y < layout.band[0]
    title_ink = (picture[layout.title_y : layout.band[0]] < INK).any(axis=0)
    assert title_ink.any()
    # The picture is widened to the title: its ink ends within the right margin.
    assert layout.width > layout.cells_x[-1] + 40 + plotting.MARGIN
    assert np.flatnonzero(title_ink).max() < layout.width - plotting.MARGIN + 1


def test_short_rows_and_blank_cells_are_white():
    rows = [np.full((3, 8, 8, 1), 0), np.full((1, 8, 8, 1), 0)]
    blank = [[False, True, False], [False]]
    picture = plotting.grid_picture(rows, K, blank=blank)
    layout = plotting.grid_layout(2, (8, 8, 1), [(None, 3)])

    def cell(r, k):
        y, x = layout.rows_y[r], layout.cells_x[k]
        return picture[y : y + 40, x : x + 40]

    assert (cell(0, 0) == 0).all() and (cell(0, 2) == 0).all() and (cell(1, 0) == 0).all()
    assert (cell(0, 1) == WHITE).all()  # blank
    assert (cell(1, 1) == WHITE).all() and (cell(1, 2) == WHITE).all()  # past the row's end
    assert layout.band is None and layout.labels_x is None  # nothing to label: no band


def test_colour_images_give_an_rgb_picture():
    rows = [np.stack([np.full((8, 8), 0), np.full((8, 8), 16), np.full((8, 8), 8)], -1)[None]]
    picture = plotting.grid_picture(rows, K, groups=[("T=1", 1)], row_labels=["cat"])
    layout = plotting.grid_layout(1, (8, 8, 3), [("T=1", 1)], row_labels=["cat"])
    assert picture.shape == (layout.height, layout.width, 3)
    y, x = layout.rows_y[0], layout.cells_x[0]
    assert picture[y, x].tolist() == [0, 255, 128]


def test_rows_must_fit_the_groups_and_labels_the_rows():
    with pytest.raises(ValueError, match="more than the 2 columns"):
        plotting.grid_picture(_cells(1, 3), K, groups=[("T=1", 2)])
    with pytest.raises(ValueError, match="2 row labels for 3 rows"):
        plotting.grid_picture(_cells(3, 1), K, row_labels=["0", "1"])
    with pytest.raises(ValueError, match="non-empty rows"):
        plotting.grid_picture([], K)


def test_rows_of_makes_a_square_ish_grid():
    images = np.zeros((10, 8, 8, 1), np.int64)
    assert [len(r) for r in plotting.rows_of(images)] == [4, 4, 2]
    assert [len(r) for r in plotting.rows_of(images, 5)] == [5, 5]


def test_save_grid_writes_the_picture_and_its_structure(tmp_path):
    rows, labels = _class_grid()
    path = tmp_path / "class_grid.png"
    picture = plotting.save_grid(str(path), rows, K, title="samples", **labels)
    with Image.open(path) as image:
        image.load()
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), picture)
    assert json.loads(image.text[plotting.GRID_TEXT_KEY]) == {
        "rows": 10,
        "columns": [2, 2],
        "headers": ["T=0.5", "T=1"],
        "row_labels": [str(y) for y in range(10)],
        "corner": "class",
        "title": "samples",
    }
