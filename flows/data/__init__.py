"""Datasets through tensorflow-datasets (TFDS), read without TensorFlow.

Importing this package registers the offline ``digits`` builder with TFDS (so
``tfds.builder('digits')`` finds it), and its offline out-of-distribution companions
``photo_patches`` and ``digits_inverted`` (``digits_ood``), and applies the TFDS workarounds
of ``tfds_compat``.

Public API:
  load_split(name, split, *, data_dir, n_bits, pad_to, download) -> ImageData
  open_split(name, split, ...) -> StreamedSplit (read on demand)
  load_datasets(data_config, stream=False, cache_bytes) -> {'train', 'validation', 'test'}:
    ImageData, or StreamedSplit with stream=True (validation may be None)
  Unlabelled(split): the split with every label 0 and one class (a marginal p(x)'s view)
  ImageData, StreamedSplit, DatasetError, DATA_CONFIG_DEFAULTS, default_data_dir
  reduce_bits, pad_images, split_validation
  epoch_permutation, batch_indices, steps_per_epoch   (stateless deterministic batching)
  pipeline.training_batches, pipeline.start_batches   (the grain training pipeline)
  Digits (the TFDS builder); PhotoPatches, DigitsInverted (its OOD companions)
"""

from flows.data import tfds_compat  # noqa: F401  (first: TFDS workarounds)
from flows.data.arrays import ImageData, pad_images, reduce_bits
from flows.data.batching import batch_indices, epoch_permutation, steps_per_epoch
from flows.data.digits import Digits
from flows.data.digits_ood import DigitsInverted, PhotoPatches
from flows.data.loading import (
    DATA_CONFIG_DEFAULTS,
    DatasetError,
    default_data_dir,
    load_datasets,
    load_split,
    open_split,
    split_validation,
)
from flows.data.source import StreamedSplit, Unlabelled

__all__ = [
    "DATA_CONFIG_DEFAULTS",
    "DatasetError",
    "Digits",
    "DigitsInverted",
    "ImageData",
    "PhotoPatches",
    "StreamedSplit",
    "Unlabelled",
    "batch_indices",
    "default_data_dir",
    "epoch_permutation",
    "load_datasets",
    "load_split",
    "open_split",
    "pad_images",
    "reduce_bits",
    "split_validation",
    "steps_per_epoch",
]
