"""Test helper: ``tfds.testing.mock_data`` that works with ``load_split`` (no TensorFlow).

``tfds.testing.mock_data`` mocks ``builder.as_data_source`` with random examples generated in
NumPy (no TensorFlow needed when no decoders are given), but in TFDS 4.9.10 its batched read is
broken: it assigns ``functools.partial(_getitems, generator=...)`` as ``__getitems__`` on a
``MagicMock`` instance, where (unlike ``__getitem__``) it is not bound, so
``source.__getitems__(keys)`` raises ``TypeError: _getitems() missing 1 required positional
argument: 'record_keys'``. ``load_split`` reads with ``__getitems__`` (reading records one at a
time is about 20x slower on real array_record files), so this wrapper patches that one function.

Usage (e.g. an end-to-end trainer test on a shrunken config)::

    with flows.data.testing.mock_data(num_examples=64):
        data = flows.data.load_split("mnist", "train")  # (64, 28, 28, 1) uint8, random
"""

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any
from unittest import mock

import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

import flows.data  # noqa: F401  (registers `digits`, applies the TFDS shim)


def _getitems(*args: Any, generator, serialized: bool = False) -> list[Any]:
    """``__getitems__`` for the mocked source; called with or without ``self``."""
    if serialized:
        raise NotImplementedError("serialized reads are not mocked here")
    record_keys: Sequence[int] = args[-1]
    return [generator[int(key)] for key in record_keys]


@contextlib.contextmanager
def mock_data(num_examples: int = 8, **kwargs: Any) -> Iterator[None]:
    """``tfds.testing.mock_data(num_examples, **kwargs)`` with a working ``__getitems__``.

    Every split of every dataset then has ``num_examples`` random examples of the dataset's
    real features (e.g. mnist: (28, 28, 1) uint8 images, labels 0..9); nothing is downloaded.
    """
    with (
        mock.patch.object(mocking, "_getitems", _getitems),
        tfds.testing.mock_data(num_examples=num_examples, **kwargs),
    ):
        yield
