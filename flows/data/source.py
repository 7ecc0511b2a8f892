"""A split read on demand: ``StreamedSplit`` reads only the examples asked for.

It wraps a random-access source of records (a ``tfds.data_source``: array_record files,
decoded with PIL, no TensorFlow) and applies, per read, what ``load_split`` applies to a whole
split: Glow's bit reduction (``reduce_bits``), zero padding (``pad_images``) and the checks
of levels and labels. An optional index subset (``subset``) is how the validation examples
are carved from the train split without reading it. ``ImageData`` (the whole split in
memory) has the same interface (``read``, ``subset``, ``labels``, ``num_examples``, ...), so
the training pipeline (``flows.data.pipeline``) and evaluation take either.

Reading example ``i`` of a subset reads record ``indices[i]``; ``read`` keeps the order it is
given (a batch of a shuffled epoch stays in that order).

``labels`` (one pass over the split, for a conditional model's ``p(y)`` or a per-class
choice) reads from a second source that skips decoding the images (``label_source``: TFDS's
``SkipDecoding``), when the source can: a record parsed without its image costs a fraction
of a decoded one (``python -m bench.input_pipeline`` measures both). ``Unlabelled`` is a
split seen without its labels (every label 0, one class): what a marginal ``p(x)`` of an
out-of-distribution set reads.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from flows.data.arrays import ImageData, check_labels, check_levels, pad_images, reduce_bits
from flows.errors import DatasetError

READ_CHUNK = 4096  # examples per source read when a whole split is read
# A split whose decoded images take at most this many bytes keeps every example it decodes
# (in one array allocated at the first read, filled as examples are read), so epochs after
# the first decode nothing: digits, MNIST, CIFAR-10 (150 MB). Larger splits (ImageNet's
# train split: 15.7 GB at 64x64) are decoded on every read and never held.
CACHE_BYTES = 1 << 30


class StreamedSplit:
    """One split of a dataset, read example by example from ``source``.

    Attributes:
      num_examples, image_shape (after padding), num_bins (after bit reduction),
      num_classes, name: as ``ImageData``'s.
      labels: (N,) int32, read once on first use (one pass over the split, through
        ``label_source()`` when given: a source of the same records whose images are left
        undecoded) and kept.
      cached: whether it keeps the examples it decodes (its decoded images fit in
        ``cache_bytes``): after its first epoch, a read only indexes memory.
    """

    def __init__(
        self,
        source,
        *,
        image_key: str,
        label_key: str | None,
        source_bins: int,
        n_bits: int | None,
        pad_to: tuple[int, int] | None,
        num_classes: int,
        name: str,
        image_shape: tuple[int, int, int],
        dtype=np.uint8,
        indices: np.ndarray | None = None,
        cache_bytes: int = CACHE_BYTES,
        label_source=None,
    ):
        self._source = source
        self._label_source = label_source  # zero-argument callable, or None
        self._image_key, self._label_key = image_key, label_key
        self._source_bins, self._n_bits, self._pad_to = source_bins, n_bits, pad_to
        _, self.num_bins = reduce_bits(np.zeros((0,), np.uint8), source_bins, n_bits, name=name)
        self.num_classes = int(num_classes)
        self.name = name
        self._indices = None if indices is None else np.asarray(indices, np.int64)
        size = len(source) if self._indices is None else len(self._indices)
        if size == 0:
            raise DatasetError(f"{name}: the split is empty")
        self.num_examples = int(size)
        self._source_shape = tuple(image_shape)
        height, width, channels = image_shape
        if pad_to is not None:
            height, width = (int(pad_to[0]), int(pad_to[1]))
        self.image_shape = (int(height), int(width), int(channels))
        self._dtype = np.dtype(dtype)
        self._cache_bytes = int(cache_bytes)
        decoded = self.num_examples * int(np.prod(self.image_shape)) * self._dtype.itemsize
        self.cached = decoded <= self._cache_bytes  # keeps what it decodes
        self._cache = None  # (images, labels, filled), allocated at the first read
        self._lock = threading.Lock()

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Examples ``indices`` (in that order): ``(images (k, H, W, C), labels (k,) int32)``,
        reduced, padded and checked like ``load_split``'s. Safe to call from several threads
        (the pipeline's readers)."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_examples):
            raise IndexError(f"{self.name}: indices outside 0..{self.num_examples - 1}")
        if not self.cached:
            return self._decode(indices)
        with self._lock:
            if self._cache is None:
                n = self.num_examples
                self._cache = (
                    np.empty((n, *self.image_shape), self._dtype),
                    np.empty((n,), np.int32),
                    np.zeros((n,), bool),
                )
            images, labels, filled = self._cache
            missing = np.unique(indices[~filled[indices]])
        if missing.size:  # decoded outside the lock; a row decoded twice is written twice
            new_images, new_labels = self._decode(missing)
            with self._lock:
                images[missing], labels[missing] = new_images, new_labels
                filled[missing] = True
        return images[indices], labels[indices]

    def _records(self, indices: np.ndarray) -> np.ndarray:
        """The source's record numbers of examples ``indices`` of this split."""
        return indices if self._indices is None else self._indices[indices]

    def _decode(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reads and decodes examples ``indices`` from the source."""
        records = self._records(indices)
        examples = self._source.__getitems__([int(i) for i in records])
        try:
            images = np.stack([ex[self._image_key] for ex in examples])
        except ValueError as e:
            raise DatasetError(f"images of different shapes are not supported: {e}") from e
        if self._label_key is None:
            labels = np.zeros((len(examples),), np.int32)
        else:
            labels = np.asarray([ex[self._label_key] for ex in examples], np.int32)
        check_levels(images, self._source_bins, self.name)
        images, _ = reduce_bits(images, self._source_bins, self._n_bits, name=self.name)
        if self._pad_to is not None:
            images = pad_images(images, self._pad_to, name=self.name)
        check_labels(labels, self.num_classes, self.name, examples=indices)
        return images, labels

    def chunks(self, size: int = READ_CHUNK):
        """``(a, b, images, labels)`` for consecutive examples ``a:b`` of the whole split."""
        for a in range(0, self.num_examples, size):
            b = min(a + size, self.num_examples)
            yield (a, b, *self.read(np.arange(a, b)))

    @functools.cached_property
    def labels(self) -> np.ndarray:
        labels = np.zeros((self.num_examples,), np.int32)
        if self._label_key is None:
            labels.flags.writeable = False
            return labels
        source = None if self._label_source is None else self._label_source()
        for a in range(0, self.num_examples, READ_CHUNK):
            examples = np.arange(a, min(a + READ_CHUNK, self.num_examples))
            records = self._records(examples)
            if source is not None:
                try:
                    chunk = source.__getitems__([int(i) for i in records])
                except ModuleNotFoundError:  # skipping the decoding needs TensorFlow here
                    source = None  # (tfds's mock data): decode the records whole
            if source is None:
                chunk = self._source.__getitems__([int(i) for i in records])
            labels[examples] = [ex[self._label_key] for ex in chunk]
            check_labels(labels[examples], self.num_classes, self.name, examples=examples)
        labels.flags.writeable = False
        return labels

    def subset(self, indices, name: str, *, cache_bytes: int | None = None) -> StreamedSplit:
        """The examples ``indices`` of this split (in that order), read on demand, with this
        split's decoded-example budget unless ``cache_bytes`` is given."""
        records = self._records(np.asarray(indices, np.int64))
        return StreamedSplit(
            self._source,
            image_key=self._image_key,
            label_key=self._label_key,
            source_bins=self._source_bins,
            n_bits=self._n_bits,
            pad_to=self._pad_to,
            num_classes=self.num_classes,
            name=name,
            image_shape=self._source_shape,
            dtype=self._dtype,
            indices=records,
            cache_bytes=self._cache_bytes if cache_bytes is None else cache_bytes,
            label_source=self._label_source,
        )

    def materialize(self):
        """The whole split in memory, as ``ImageData``."""
        images = np.empty((self.num_examples, *self.image_shape), self._dtype)
        labels = np.empty((self.num_examples,), np.int32)
        for a, b, chunk_images, chunk_labels in self.chunks():
            images[a:b], labels[a:b] = chunk_images, chunk_labels
        return ImageData(images, labels, self.num_bins, self.num_classes, self.name)


class Unlabelled:
    """``split`` (a ``StreamedSplit`` or an ``ImageData``) with every label 0 and one class:
    the images of any labelled or unlabelled set, read as a label-conditioned model's
    marginal ``p(x)`` reads them (its labels, other classes or none, never reach the
    model). Every other attribute is ``split``'s."""

    num_classes = 1

    def __init__(self, split):
        self._split = split

    def __getattr__(self, name):
        return getattr(self._split, name)

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self._split.read(indices)
        return images, np.zeros_like(labels)

    @property
    def labels(self) -> np.ndarray:
        return np.zeros((self._split.num_examples,), np.int32)
