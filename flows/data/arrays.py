"""A split in memory (``ImageData``) and the per-array checks and transforms that reading
any split applies: the levels and labels checks, Glow's bit reduction and zero padding.

``flows.data.loading`` (whole splits, ``load_split``) and ``flows.data.source`` (splits read on
demand, ``StreamedSplit``) both use them.
"""

import dataclasses

import numpy as np

from flows.errors import DatasetError


@dataclasses.dataclass(frozen=True)
class ImageData:
    """One split, all in memory.

    Attributes:
      images: (N, H, W, C) uint8 (uint16 for 16-bit data), integer levels 0..num_bins-1.
      labels: (N,) int32 class labels in 0..num_classes-1 (all 0 when the dataset has no
        class label); other labels raise ``DatasetError`` (``check_labels``).
      num_bins: K, the number of levels per value (17 for digits, 2**n_bits after reduction).
      num_classes: number of classes (1 when the dataset has no class label).
      name: provenance, dataset and split, e.g. ``"digits:train"``.
    """

    images: np.ndarray
    labels: np.ndarray
    num_bins: int
    num_classes: int
    name: str
    cached = True  # in memory (as ``StreamedSplit.cached``)

    def __post_init__(self):
        if self.images.ndim != 4 or self.labels.shape != self.images.shape[:1]:
            raise DatasetError(
                f"{self.name}: expected images (N, H, W, C) and labels (N,), got "
                f"{self.images.shape} and {self.labels.shape}"
            )
        check_levels(self.images, self.num_bins, self.name)
        check_labels(self.labels, self.num_classes, self.name)

    @property
    def num_examples(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Examples ``indices`` in that order: ``(images, labels)`` (``StreamedSplit.read``)."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        return self.images[indices], self.labels[indices]

    def subset(self, indices, name: str) -> "ImageData":
        """The examples ``indices`` (in that order) as a new ``ImageData``."""
        indices = np.asarray(indices, np.int64)
        return dataclasses.replace(
            self, images=self.images[indices], labels=self.labels[indices], name=name
        )


def check_levels(images: np.ndarray, num_bins: int, name: str) -> None:
    """Raises ``DatasetError`` unless the images are integers in ``[0, num_bins)`` (the values
    dequantization spreads over [0, 1); a value outside would leave the unit cube, a float
    image (NaN included) has no bins)."""
    if not np.issubdtype(images.dtype, np.integer):
        raise DatasetError(
            f"{name}: images must hold integer levels 0..{num_bins - 1}, got dtype {images.dtype}"
        )
    if images.size and (images.min() < 0 or images.max() >= num_bins):
        raise DatasetError(
            f"{name}: image values span {images.min()}..{images.max()}, outside the "
            f"{num_bins} levels 0..{num_bins - 1}; fix num_bins (or n_bits) or the data"
        )


def check_labels(labels: np.ndarray, num_classes: int, name: str, examples=None) -> None:
    """Raises ``DatasetError`` unless every label is in ``[0, num_classes)`` (a model one-hots
    them; an out-of-range label would condition on nothing). ``examples``: the split's
    indices of ``labels`` (default ``0..len-1``), which the message names."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        example = bad[0] if examples is None else examples[bad[0]]
        counted = "" if examples is None else f" of the {len(labels)} read"
        raise DatasetError(
            f"{name}: label {labels[bad[0]]} of example {example} ({bad.size} such{counted}) "
            f"is outside 0..{num_classes - 1} (num_classes={num_classes}); fix the labels or "
            "num_classes (re-prepare a dataset whose labels disagree with its ClassLabel feature)"
        )


def reduce_bits(
    images: np.ndarray, num_bins: int, n_bits: int | None, *, name: str = "dataset"
) -> tuple[np.ndarray, int]:
    """Glow's reduction of ``2**b`` levels to ``2**n_bits``: ``v // 2**(b - n_bits)``.

    Returns ``(images, num_bins)``; unchanged when ``n_bits`` is None.
    """
    if n_bits is None:
        return images, num_bins
    source_bits = int(num_bins).bit_length() - 1
    if 2**source_bits != num_bins:
        raise DatasetError(
            f"n_bits={n_bits} needs a dataset with 2**b levels, but {name} has {num_bins} "
            "levels: set n_bits=None to use them as they are"
        )
    if not 1 <= n_bits <= source_bits:
        raise DatasetError(
            f"n_bits must be in 1..{source_bits} for {name} ({num_bins} levels), got {n_bits}"
        )
    return images // np.asarray(2 ** (source_bits - n_bits), images.dtype), 2**n_bits


def check_pad_to(image_hw: tuple[int, int], pad_to, name: str) -> tuple[int, int]:
    """``pad_to`` as ``(height, width)`` ints; ``DatasetError`` unless it is a pair at least
    as large as ``image_hw`` (the images of ``name``)."""
    if len(pad_to) != 2:
        raise DatasetError(f"pad_to must be (height, width), got {pad_to!r}")
    target = (int(pad_to[0]), int(pad_to[1]))
    if target[0] < image_hw[0] or target[1] < image_hw[1]:
        raise DatasetError(
            f"pad_to={target} is smaller than the {image_hw[0]}x{image_hw[1]} images of {name}: "
            "use pad_to=None or a size at least as large"
        )
    return target


def pad_images(images: np.ndarray, pad_to, *, name: str = "dataset") -> np.ndarray:
    """Zero-pads (N, H, W, C) images symmetrically to ``pad_to = (H', W')``.

    An odd difference puts the extra row/column at the bottom/right (28 -> 31: 1 top, 2 bottom).
    """
    height, width = check_pad_to(images.shape[1:3], pad_to, name)
    dh, dw = height - images.shape[1], width - images.shape[2]
    if dh == dw == 0:
        return images
    pads = ((0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0))
    return np.pad(images, pads)
