"""Settings that let tensorflow-datasets (TFDS) run here without TensorFlow or network.

Import this module before using TFDS (``flows.data`` does). It does two things:

1. ``importlib_resources`` shim. TFDS 4.9.10 evaluates ``importlib_resources.abc.Traversable``
   in ``DatasetBuilder.code_path`` (reached by every ``tfds.builder(...)``, catalog datasets
   included), but declares the ``importlib_resources`` backport as a dependency only for
   Python < 3.9 (tensorflow/datasets#11212). On Python >= 3.11 the standard library's
   ``importlib.resources`` has the same ``abc.Traversable``, so when the backport is missing we
   register the standard module under that name. Installing ``importlib_resources`` makes the
   shim a no-op.

2. No Google Cloud Storage. TFDS 4.9.10 ships with GCS lookups disabled
   (``gcs_utils._is_gcs_disabled = True``); we also pass ``try_gcs=False`` to ``tfds.builder``
   and ``DownloadConfig(try_download_gcs=False)`` to ``download_and_prepare`` (see
   ``loading.py``), so nothing in this package asks GCS for dataset files or metadata.

Reading needs no TensorFlow: prepared ``array_record`` files are read through
``builder.as_data_source(split)``, which decodes PNG images with PIL. Preparing the offline
``digits`` dataset needs no TensorFlow either: its builder hands TFDS PNG bytes encoded with PIL
(TFDS encodes NumPy images with ``tf.image.encode_png``, which is why catalog image datasets
such as MNIST need TensorFlow, and internet, to be *prepared*; they can be read without it).
"""

import importlib.resources
import importlib.resources.abc
import importlib.util
import logging
import sys


def install_importlib_resources_shim() -> None:
    """Registers ``importlib.resources`` as ``importlib_resources`` if the backport is missing."""
    if "importlib_resources" in sys.modules:
        return
    if importlib.util.find_spec("importlib_resources") is None:
        sys.modules["importlib_resources"] = importlib.resources


def tensorflow_available() -> bool:
    """Whether TensorFlow can be imported (without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


install_importlib_resources_shim()


class _DropOpenCVAdvice(logging.Filter):
    """TFDS warns on every image decode setup that OpenCV would be faster; PIL is what we
    use on purpose (no extra dependency), so the warning is noise in every run's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "OpenCV is not installed" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropOpenCVAdvice())
