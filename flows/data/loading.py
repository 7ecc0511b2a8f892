"""Image datasets through TFDS's no-TensorFlow path: read on demand (``open_split``, a
``StreamedSplit``) or whole into NumPy arrays (``load_split``, an ``ImageData``).

Every dataset, the offline ``digits`` and catalog ones (``mnist``, ``cifar10``, ...), goes
through the same calls, the ones ``tfds.data_source`` makes::

    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record", try_gcs=False)
    builder.download_and_prepare(file_format="array_record", ...)  # if download=True
    source = builder.as_data_source(split)                         # array_record, PIL decoding

and examples are read with ``source.__getitems__``: by the batch when training, in chunks into
one ``(N, H, W, C)`` array by ``load_split`` (reading ``source[i]`` one at a time took 3x as
long for 60k images). Cost of a whole split, one CPU core: digits train (1497) about 0.2 s;
60k 28x28 PNG images about 5 s, spent in TFDS's per-example protobuf parsing and PIL decoding
(TFDS decodes with OpenCV instead when installed).

Levels. ``num_bins`` (K) is the dataset's own count of levels per value:
``info.metadata['num_bins']`` when the builder records it (17 for ``digits``; copies prepared
before the rename record ``num_levels``, also read), else ``2**bits`` of the image dtype (256
for uint8).
``n_bits`` reduces a ``2**b``-level dataset as Glow does: ``v // 2**(b - n_bits)``, leaving
``2**n_bits`` levels. Padding (``pad_to``) adds zeros symmetrically, as openai/glow pads MNIST
28x28 to 32x32; bits/dim is then per *padded* dimension (32*32*1), not comparable with numbers
per 28*28 dimension.

Preparing a catalog image dataset needs internet and TensorFlow (TFDS encodes its images with
``tf.image.encode_png``); reading a prepared ``array_record`` copy needs neither. Download
attempts fail fast (few retries, socket timeout) and become a one-line ``DatasetError`` that
says how to fix it.
"""

import difflib
import functools
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from flows.data import afhq as _afhq  # noqa: F401  (registers `afhq`, read from its folder)
from flows.data import digits as _digits  # noqa: F401  (registers the `digits` builder)
from flows.data import digits_ood as _digits_ood  # noqa: F401  (and its OOD companions)
from flows.data import tfds_compat
from flows.data.arrays import ImageData, check_pad_to
from flows.data.source import CACHE_BYTES, StreamedSplit
from flows.errors import DatasetError

# Fields of `config.data` read by `load_datasets`, with their defaults.
DATA_CONFIG_DEFAULTS: dict[str, Any] = {
    "name": None,  # required: TFDS name, e.g. 'digits', 'mnist', 'cifar10'
    "data_dir": None,  # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets
    "n_bits": None,  # None: the dataset's own levels; else reduce 2**b levels to 2**n_bits
    "pad_to": None,  # None or (H, W): zero-pad symmetrically (bits/dim per padded dim)
    "validation_size": 0,  # examples carved from the train split; 0: no validation split
    "split_seed": 0,  # seed of the shuffle the validation examples are carved from
    "train_split": "train",
    "test_split": "test",
    "download": True,  # False: never call download_and_prepare
}


def default_data_dir() -> str:
    """``$TFDS_DATA_DIR`` if set, else ``~/tensorflow_datasets`` (TFDS's own default)."""
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def split_validation(data, validation_size: int, seed: int = 0):
    """Carves ``validation_size`` examples from the END of a seeded shuffle of ``data`` (an
    ``ImageData`` or a ``StreamedSplit``; the parts are of the same kind).

    ``perm = np.random.RandomState(seed).permutation(N)``; validation is ``perm[N - v:]``, train
    the rest. Both keep the record order of ``data`` (indices sorted), so they are disjoint and
    the same on every run. ``validation_size == 0`` returns ``(data, None)``.
    """
    n = data.num_examples
    if validation_size == 0:
        return data, None
    if not 0 < validation_size < n:
        raise DatasetError(
            f"validation_size must be in 0..{n - 1} for {data.name} ({n} examples), "
            f"got {validation_size}"
        )
    perm = np.random.RandomState(seed).permutation(n)
    keep = n - validation_size
    train, validation = (
        data.subset(np.sort(idx), f"{data.name}[shuffle(seed={seed})]{piece}")
        for idx, piece in ((perm[:keep], f"[:{keep}]"), (perm[keep:], f"[{keep}:]"))
    )
    return train, validation


def _first_line(exc: BaseException, limit: int = 300) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _get_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    try:
        return tfds.builder(name, data_dir=data_dir, file_format="array_record", try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(
            name, tfds.list_builders(with_community_datasets=False), n=3
        )
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise DatasetError(
            f"unknown dataset {name!r}: it is not in the TFDS registry; {hint}"
            "for the offline 8x8 handwritten digits use name='digits'"
        ) from None
    except (ValueError, AssertionError) as e:
        raise DatasetError(f"cannot build TFDS dataset {name!r}: {_first_line(e)}") from e


def _fix_hint(name: str, data_dir: str, builder: tfds.core.DatasetBuilder) -> str:
    manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if manual:  # a dataset TFDS cannot download (afhq): where its files go
        return "fix: " + manual.replace("<data_dir>", data_dir)
    needs = "internet" if tfds_compat.tensorflow_available() else "internet and TensorFlow"
    return (
        f"fix: on a machine with {needs} run `tfds build {name} --data_dir={data_dir} "
        f"--file_format=array_record` and copy the prepared folder {builder.data_dir} to this "
        "machine (or set data_dir to where it is prepared)"
    )


def _cause(exc: BaseException) -> str:
    chain, e = [], exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if any(isinstance(c, ModuleNotFoundError) and "tensorflow" in str(c) for c in chain):
        return "preparing it needs TensorFlow, which is not installed"
    if any(  # a dataset read from a folder (afhq): the folder is missing or incomplete
        isinstance(c, FileNotFoundError)
        or (isinstance(c, AssertionError) and str(c).startswith("Manual directory"))
        for c in chain
    ):
        return "its files are not there"
    if any(isinstance(c, OSError) for c in chain):  # requests errors are OSErrors
        return f"download failed, no network? {_first_line(exc, limit=160)}"
    return f"preparation failed: {_first_line(exc, limit=160)}"


def _prepare(builder: tfds.core.DatasetBuilder, name: str, data_dir: str) -> None:
    """``download_and_prepare`` in array_record; a no-op when the data is already there."""
    try:
        with tfds_compat.fail_fast_downloads(), tfds_compat.quiet_preparation(builder):
            builder.download_and_prepare(
                file_format="array_record",
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            )
    except Exception as e:
        if builder.is_prepared():  # another process prepared it at the same time
            return
        raise DatasetError(
            f"dataset {name!r} is not prepared in {data_dir} and cannot be prepared here "
            f"({_cause(e)}); {_fix_hint(name, data_dir, builder)}"
        ) from e


def _as_data_source(builder: tfds.core.DatasetBuilder, name: str, split: str, data_dir: str):
    try:
        return builder.as_data_source(split=split)
    except NotImplementedError as e:  # prepared, but in a format without random access
        raise DatasetError(
            f"dataset {name!r} in {builder.data_dir} is stored as "
            f"{builder.info.file_format}, which cannot be read without TensorFlow; "
            f"{_fix_hint(name, data_dir, builder)}"
        ) from e
    except Exception as e:
        if not builder.is_prepared():
            raise DatasetError(
                f"dataset {name!r} is not prepared in {data_dir} (download=False); "
                f"{_fix_hint(name, data_dir, builder)}"
            ) from e
        splits = ", ".join(sorted(builder.info.splits)) or "none"
        raise DatasetError(
            f"cannot read split {split!r} of {name!r} from {builder.data_dir} "
            f"(splits: {splits}): {_first_line(e)}"
        ) from e


def _feature_keys(info: tfds.core.DatasetInfo, name: str) -> tuple[str, str | None]:
    """(image key, label key or None) from the supervised keys, else 'image' / 'label'."""
    features = info.features
    keys = info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        image_key, label_key = keys
    else:
        image_key, label_key = "image", "label"
    if image_key not in features or not isinstance(features[image_key], tfds.features.Image):
        raise DatasetError(f"dataset {name!r} has no image feature {image_key!r}")
    if label_key not in features or not isinstance(features[label_key], tfds.features.ClassLabel):
        label_key = None
    return image_key, label_key


def _dataset_bins(info: tfds.core.DatasetInfo, dtype: np.dtype, name: str) -> int:
    metadata = info.metadata
    if isinstance(metadata, Mapping):
        for key in ("num_bins", "num_levels"):  # num_levels: digits prepared before the rename
            if key in metadata:
                return int(metadata[key])
    if np.issubdtype(dtype, np.unsignedinteger):
        return 2 ** (8 * np.dtype(dtype).itemsize)
    raise DatasetError(f"dataset {name!r} has {dtype} images; integer levels are required")


def open_split(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    n_bits: int | None = None,
    pad_to: tuple[int, int] | None = None,
    download: bool = True,
    cache_bytes: int = CACHE_BYTES,
) -> StreamedSplit:
    """Split ``split`` of TFDS dataset ``name``, read on demand (``StreamedSplit``): nothing
    but the first example is read here. Arguments and errors as ``load_split``'s; a split
    whose decoded images fit in ``cache_bytes`` keeps what it decodes (0: never)."""
    data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir else default_data_dir()
    builder = _get_builder(name, data_dir)
    image_key, label_key = _feature_keys(builder.info, name)
    image_shape = builder.info.features[image_key].shape
    if pad_to is not None and None not in image_shape[:2]:
        check_pad_to(image_shape[:2], pad_to, name)  # fail before reading anything
    if download:
        _prepare(builder, name, data_dir)
    source = _as_data_source(builder, name, split, data_dir)
    if len(source) == 0:
        raise DatasetError(f"{name}:{split}: the split is empty")
    first = np.asarray(source[0][image_key])
    if pad_to is not None:
        check_pad_to(first.shape[:2], pad_to, name)
    num_classes = builder.info.features[label_key].num_classes if label_key else 1

    def label_source():  # the same records, their images left undecoded
        return builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()})

    return StreamedSplit(
        source,
        image_key=image_key,
        label_key=label_key,
        source_bins=_dataset_bins(builder.info, first.dtype, name),
        n_bits=n_bits,
        pad_to=pad_to,
        num_classes=int(num_classes),
        name=f"{name}:{split}",
        image_shape=first.shape,
        dtype=first.dtype,
        cache_bytes=cache_bytes,
        label_source=label_source,
    )


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    n_bits: int | None = None,
    pad_to: tuple[int, int] | None = None,
    download: bool = True,
) -> ImageData:
    """Loads split ``split`` of TFDS dataset ``name`` into memory.

    Args:
      name: TFDS name ('digits', 'mnist', 'cifar10', ...; a version or config may follow,
        as in ``tfds.builder``).
      split: TFDS split string ('train', 'test', 'train[:1000]', ...).
      data_dir: where prepared datasets live; default ``default_data_dir()``.
      n_bits: None keeps the dataset's levels; else reduce ``2**b`` levels to ``2**n_bits``.
      pad_to: None or (H, W): zero-pad symmetrically to that spatial size.
      download: call ``download_and_prepare`` first (``digits`` prepares itself offline;
        catalog datasets need internet and TensorFlow); False only reads.

    Raises:
      DatasetError: unknown dataset, not prepared and not preparable, bad n_bits or pad_to.
    """
    split_data = open_split(
        name, split, data_dir=data_dir, n_bits=n_bits, pad_to=pad_to, download=download,
        cache_bytes=0,  # read once into the arrays: no decoded-example cache beside them
    )  # fmt: skip
    return split_data.materialize()


def load_datasets(data_config, *, stream: bool = False, cache_bytes: int = CACHE_BYTES) -> dict:
    """Loads 'train', 'validation' (None when ``validation_size == 0``) and 'test': whole
    splits in memory (``ImageData``), or with ``stream=True`` splits read on demand
    (``StreamedSplit``, what training and evaluation use: no split is read whole), keeping
    what they decode within ``cache_bytes`` (``open_split``; 0 for a single pass).

    ``data_config`` (an ml_collections ConfigDict or a mapping) has the fields of
    ``DATA_CONFIG_DEFAULTS``; only ``name`` is required:

      name (str): TFDS dataset name: 'digits', 'mnist', 'cifar10', ...
      data_dir (str | None = None): None means $TFDS_DATA_DIR, else ~/tensorflow_datasets.
      n_bits (int | None = None): None keeps the dataset's levels (17 for digits, 256 for
        8-bit data); else Glow's reduction ``v // 2**(8 - n_bits)``, ``2**n_bits`` levels.
      pad_to ((int, int) | None = None): zero-pad symmetrically to (H, W), e.g. (32, 32) for
        MNIST as openai/glow does; bits/dim is then per padded dimension.
      validation_size (int = 0): examples carved from the END of a shuffle (seed
        ``split_seed``) of the train split; 0 means no validation split.
      split_seed (int = 0): seed of that shuffle.
      train_split (str = 'train'), test_split (str = 'test'): TFDS split names.
      download (bool = True): False never calls download_and_prepare.

    Unknown fields raise ``DatasetError`` (a misspelt key must not be silently ignored).
    """
    given = {k: data_config[k] for k in data_config.keys()}
    unknown = sorted(set(given) - set(DATA_CONFIG_DEFAULTS))
    if unknown:
        raise DatasetError(
            f"unknown data config field(s) {unknown}; known: {sorted(DATA_CONFIG_DEFAULTS)}"
        )
    cfg = {**DATA_CONFIG_DEFAULTS, **given}
    if not cfg["name"]:
        raise DatasetError("data config needs a dataset name, e.g. name='digits'")
    pad_to = tuple(cfg["pad_to"]) if cfg["pad_to"] is not None else None
    kwargs = dict(
        data_dir=cfg["data_dir"], n_bits=cfg["n_bits"], pad_to=pad_to, download=cfg["download"]
    )
    if stream:
        load = functools.partial(open_split, cache_bytes=cache_bytes)
    else:
        load = load_split
    train = load(cfg["name"], cfg["train_split"], **kwargs)
    train, validation = split_validation(train, int(cfg["validation_size"]), cfg["split_seed"])
    test = load(cfg["name"], cfg["test_split"], **kwargs)
    return {"train": train, "validation": validation, "test": test}
