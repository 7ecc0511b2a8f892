"""Every workaround for tensorflow-datasets (TFDS) in one place, each with the TFDS behaviour
it works around. Checked against TFDS 4.9.10.

1. **Missing ``importlib_resources``** (tensorflow/datasets#11212). TFDS evaluates
   ``importlib_resources.abc.Traversable`` in ``DatasetBuilder.code_path`` (reached by every
   ``tfds.builder(...)``) but declares the backport only for Python < 3.9. On Python >= 3.11
   the standard ``importlib.resources`` has the same ``abc.Traversable``, so when the backport
   is missing ``install_importlib_resources_shim`` registers the standard module under that
   name (applied on import of this module; a no-op when the backport is installed).
2. **Slow offline failure of downloads.** TFDS retries each URL 10 times with exponential
   backoff (about 200 s with no network) and sets no socket timeout; ``fail_fast_downloads``
   lowers both while a dataset is prepared, and restores them after.
3. **Broken batched reads under ``tfds.testing.mock_data``**: it assigns
   ``functools.partial(_getitems, generator=...)`` as ``__getitems__`` on a ``MagicMock``
   instance, where (unlike ``__getitem__``) it is not bound, so ``source.__getitems__(keys)``
   raises ``TypeError: _getitems() missing 1 required positional argument``.
   ``mock_getitems_fix`` patches that one function (used by ``flows.data.testing``).
4. **OpenCV advice on every decode**: TFDS logs that OpenCV would decode faster; PIL is what
   we use on purpose (no extra dependency), so the message is filtered from absl's log.
5. **Download noise when preparing an offline dataset**: ``download_and_prepare`` prints
   "Downloading and preparing dataset Unknown size (download: Unknown size, ...)" and
   "Dataset ... downloaded and prepared to ...", and shows a progress bar per split and per
   shuffle, for a dataset that downloads nothing and is prepared in a second. A builder
   that mixes in ``QuietPreparation`` prints its own one line instead (``PREPARING``) and
   prepares with TFDS's progress bars off (restored after).
6. **Output of a catalog dataset's preparation that fails**: ``download_and_prepare`` prints
   its banner ("Downloading and preparing dataset ...", on stdout) and draws its download
   and extraction progress bars (on stderr) before it fails offline: nine lines ahead of our
   one-line error. ``quiet_preparation`` prepares such a builder with the progress bars off
   and the printed text held back: written out when the preparation succeeds, dropped when
   it fails.

Nothing here talks to Google Cloud Storage: ``flows.data.loading`` passes ``try_gcs=False``
and ``DownloadConfig(try_download_gcs=False)`` (TFDS 4.9.10 also ships with GCS disabled).
Reading prepared ``array_record`` files needs no TensorFlow (``builder.as_data_source``
decodes PNG with PIL); preparing ``digits`` needs none either (its builder encodes PNG with
PIL), while catalog image datasets need TensorFlow and internet once, to be prepared.
"""

import contextlib
import importlib.resources
import importlib.resources.abc
import importlib.util
import io
import logging
import socket
import sys
from collections.abc import Iterator, Sequence
from typing import Any

_DOWNLOAD_RETRIES = 1
_DOWNLOAD_SOCKET_TIMEOUT_S = 20.0


def install_importlib_resources_shim() -> None:
    """Registers ``importlib.resources`` as ``importlib_resources`` if the backport is missing."""
    if "importlib_resources" in sys.modules:
        return
    if importlib.util.find_spec("importlib_resources") is None:
        sys.modules["importlib_resources"] = importlib.resources


def tensorflow_available() -> bool:
    """Whether TensorFlow can be imported (without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


@contextlib.contextmanager
def fail_fast_downloads() -> Iterator[None]:
    """Few download retries and a socket timeout while inside, so an offline download fails
    in seconds instead of minutes. Both settings are restored on exit."""
    from tensorflow_datasets.core.download import downloader

    old_retries, old_timeout = downloader.MAX_RETRIES, socket.getdefaulttimeout()
    downloader.MAX_RETRIES = min(old_retries, _DOWNLOAD_RETRIES)
    if old_timeout is None:
        socket.setdefaulttimeout(_DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        yield
    finally:
        downloader.MAX_RETRIES = old_retries
        socket.setdefaulttimeout(old_timeout)


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """TFDS's progress bars (``tfds.core.utils.tqdm``) off while inside, then as before."""
    from tensorflow_datasets.core.utils import tqdm_utils

    was = tqdm_utils._active
    tqdm_utils.display_progress_bar(False)
    try:
        yield
    finally:
        tqdm_utils.display_progress_bar(was)


class QuietPreparation:
    """Mixin for a TFDS builder prepared offline: ``download_and_prepare`` prints
    ``PREPARING`` (formatted with ``data_dir``, where the dataset goes) once, when it
    prepares, and nothing else of TFDS's (workaround 5)."""

    PREPARING = "preparing the {name} dataset in {data_dir} (once, a few seconds)"

    def download_and_prepare(self, *args, **kwargs):
        with no_progress_bars():
            return super().download_and_prepare(*args, **kwargs)

    def _log_download_bytes(self) -> None:  # TFDS calls it when it starts preparing
        print(self.PREPARING.format(name=self.name, data_dir=self.data_dir), flush=True)

    def _log_download_done(self) -> None:  # TFDS's "downloaded and prepared" line
        pass


def quiet_preparation(builder) -> contextlib.AbstractContextManager:
    """The context to prepare ``builder`` in: a ``QuietPreparation`` builder prints its own
    line (workaround 5); any other prepares with TFDS's progress bars off and what TFDS
    prints held back, written to stdout when the block ends normally, dropped when it raises
    (workaround 6)."""
    if isinstance(builder, QuietPreparation):
        return contextlib.nullcontext()
    return _held_back()


@contextlib.contextmanager
def _held_back() -> Iterator[None]:
    held = io.StringIO()
    with no_progress_bars(), contextlib.redirect_stdout(held):
        yield
    sys.stdout.write(held.getvalue())


def _mock_getitems(*args: Any, generator, serialized: bool = False) -> list[Any]:
    """``__getitems__`` for the mocked source; called with or without ``self``."""
    if serialized:
        raise NotImplementedError("serialized reads are not mocked here")
    record_keys: Sequence[int] = args[-1]
    return [generator[int(key)] for key in record_keys]


def mock_getitems_fix():
    """A context manager that makes ``tfds.testing.mock_data``'s batched reads work."""
    from unittest import mock  # test-time only: not imported by the library's own paths

    from tensorflow_datasets.testing import mocking

    return mock.patch.object(mocking, "_getitems", _mock_getitems)


class _DropOpenCVAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "OpenCV is not installed" not in record.getMessage()


install_importlib_resources_shim()
logging.getLogger("absl").addFilter(_DropOpenCVAdvice())
