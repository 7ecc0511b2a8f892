"""Test helper: ``tfds.testing.mock_data`` that works with ``load_split`` (no TensorFlow).

``tfds.testing.mock_data`` mocks ``builder.as_data_source`` with random examples generated in
NumPy (no TensorFlow needed when no decoders are given); its batched read needs the fix in
``flows.data.tfds_compat`` (item 3), which this wrapper applies.

Usage (e.g. an end-to-end trainer test on a shrunken config)::

    with flows.data.testing.mock_data(num_examples=64):
        data = flows.data.load_split("mnist", "train")  # (64, 28, 28, 1) uint8, random
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from flows.data import tfds_compat


@contextlib.contextmanager
def mock_data(num_examples: int = 8, **kwargs: Any) -> Iterator[None]:
    """``tfds.testing.mock_data(num_examples=..., **kwargs)`` with a working ``__getitems__``.

    Every split of every dataset then has ``num_examples`` random examples of the dataset's
    real features (e.g. mnist: (28, 28, 1) uint8 images, labels 0..9); nothing is downloaded.
    """
    with (
        tfds_compat.mock_getitems_fix(),
        tfds.testing.mock_data(num_examples=num_examples, **kwargs),
    ):
        yield
