"""Tests of flows.data: the offline digits builder, load_split/load_datasets, batching, errors.

All offline: data_dir is a pytest tmp dir, and tests that could reach a download block the
network (socket.getaddrinfo raises) so they behave the same with or without internet.
"""

import importlib.util
import socket
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

import flows.data as fd
from flows.data import afhq, batching, digits_ood, loading, pipeline
from flows.data import digits as digits_lib
from flows.data import testing as data_testing
from flows.errors import ConfigError


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """A data_dir with digits prepared once (through load_split) for the module."""
    data_dir = tmp_path_factory.mktemp("tfds")
    fd.load_split("digits", "test", data_dir=str(data_dir))
    return str(data_dir)


@pytest.fixture
def no_network(monkeypatch):
    """Makes every host name lookup fail at once, as on a machine without network; returns
    the list of the hosts looked up."""
    lookups = []

    def fail(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    return lookups


@pytest.fixture
def digits_calls(monkeypatch):
    """Counts, by name, the calls of the digits builder's preparation steps: loading
    scikit-learn's images and encoding one image as PNG."""
    calls = {"load": 0, "encode": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        digits_lib, "load_sklearn_digits", counted("load", digits_lib.load_sklearn_digits)
    )
    monkeypatch.setattr(digits_lib, "encode_png", counted("encode", digits_lib.encode_png))
    return calls


@pytest.fixture
def image_decodes(monkeypatch):
    """Counts the images TFDS decodes (``Image.decode_example_np``: every read of an image
    feature without TensorFlow, PIL or OpenCV); returns a one-element list of the count."""
    count = [0]
    decode = tfds.features.Image.decode_example_np

    def counting(self, *args, **kwargs):
        count[0] += 1
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(tfds.features.Image, "decode_example_np", counting)
    return count


@pytest.fixture
def without_tensorflow():
    """Runs the test only where TensorFlow is not installed, and checks it stays unimported."""
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed; this test checks the TensorFlow-free path")
    yield
    assert "tensorflow" not in sys.modules


def _sklearn_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.uint8)[..., None], bunch.target


def _one_line(error: Exception) -> str:
    message = str(error)
    assert "\n" not in message and message.strip() == message and message
    return message


# ----------------------------------------------------------------------------- digits builder


def test_digits_prepares_and_reads_through_tfds_builder_without_tensorflow(
    tmp_path, without_tensorflow, digits_calls
):
    builder = tfds.builder("digits", data_dir=str(tmp_path))
    assert isinstance(builder, fd.Digits)
    builder.download_and_prepare(file_format="array_record")
    # scikit-learn's images are loaded once and each of the 1797 is encoded once.
    assert digits_calls == {"load": 1, "encode": 1797}
    assert builder.is_prepared()
    assert sorted(p.name for p in tmp_path.glob("digits/1.0.0/*.array_record*")) == [
        "digits-test.array_record-00000-of-00001",
        "digits-train.array_record-00000-of-00001",
    ]
    assert builder.info.splits["train"].num_examples == 1497
    assert builder.info.splits["test"].num_examples == 300
    assert builder.info.metadata["num_bins"] == 17
    source = builder.as_data_source("test")
    example = source[0]
    assert example["image"].shape == (8, 8, 1) and example["image"].dtype == np.uint8
    assert 0 <= example["label"] < 10
    # tfds.data_source, the catalog datasets' one-call path, reads it too.
    assert len(tfds.data_source("digits", split="train", data_dir=str(tmp_path))) == 1497


def test_digits_splits_are_the_documented_seeded_permutation(digits_dir):
    images, targets = _sklearn_digits()
    perm = np.random.RandomState(0).permutation(1797)
    indices = digits_lib.split_indices()
    np.testing.assert_array_equal(indices["train"], perm[:1497])
    np.testing.assert_array_equal(indices["test"], perm[1497:])
    for split in ("train", "test"):
        data = fd.load_split("digits", split, data_dir=digits_dir)
        np.testing.assert_array_equal(data.images, images[indices[split]])
        np.testing.assert_array_equal(data.labels, targets[indices[split]])


def test_load_split_digits_shapes_dtypes_levels(digits_dir):
    sizes = {"train": 1497, "test": 300}
    for split, size in sizes.items():
        data = fd.load_split("digits", split, data_dir=digits_dir)
        assert data.images.shape == (size, 8, 8, 1) and data.images.dtype == np.uint8
        assert data.labels.shape == (size,) and data.labels.dtype == np.int32
        assert data.images.min() == 0 and data.images.max() == 16
        assert set(np.unique(data.labels)) == set(range(10))
        assert (data.num_bins, data.num_classes) == (17, 10)
        assert data.name == f"digits:{split}"
        assert data.num_examples == size and data.image_shape == (8, 8, 1)


def test_load_split_accepts_tfds_split_slices(digits_dir):
    full = fd.load_split("digits", "train", data_dir=digits_dir)
    part = fd.load_split("digits", "train[:100]", data_dir=digits_dir)
    assert part.name == "digits:train[:100]"
    np.testing.assert_array_equal(part.images, full.images[:100])


def test_load_split_of_a_prepared_split_decodes_each_image_once(
    digits_dir, digits_calls, image_decodes
):
    """Loading a prepared split only reads it: nothing is prepared again (no scikit-learn
    load, no PNG encoding) and no image is decoded twice: one decode per example read, plus
    the first example, which ``open_split`` reads for the image shape. The labels come with
    the images (no second pass over the split)."""
    data = fd.load_split("digits", "train", data_dir=digits_dir)
    assert data.num_examples == 1497 and len(set(data.labels.tolist())) == 10
    assert image_decodes[0] == 1497 + 1
    image_decodes[0] = 0
    part = fd.load_split("digits", "train[:100]", data_dir=digits_dir)
    assert part.num_examples == 100 and image_decodes[0] == 100 + 1
    assert digits_calls == {"load": 0, "encode": 0}


# ----------------------------------------------------------------------------- load_datasets


def _config(digits_dir, **overrides):
    config = ml_collections.ConfigDict(
        {"name": "digits", "data_dir": digits_dir, "validation_size": 150, "split_seed": 0}
    )
    config.update(overrides)
    return config


def test_load_datasets_carves_a_disjoint_deterministic_validation_split(digits_dir):
    first = fd.load_datasets(_config(digits_dir))
    second = fd.load_datasets(_config(digits_dir))
    assert first["train"].num_examples == 1347
    assert first["validation"].num_examples == 150
    assert first["test"].num_examples == 300
    assert first["train"].name == "digits:train[shuffle(seed=0)][:1347]"
    assert first["validation"].name == "digits:train[shuffle(seed=0)][1347:]"
    for key in ("train", "validation", "test"):
        np.testing.assert_array_equal(first[key].images, second[key].images)
        np.testing.assert_array_equal(first[key].labels, second[key].labels)
    other_seed = fd.load_datasets(_config(digits_dir, split_seed=1))
    assert not np.array_equal(other_seed["validation"].images, first["validation"].images)


def test_load_datasets_without_validation(digits_dir):
    datasets = fd.load_datasets(_config(digits_dir, validation_size=0))
    assert datasets["validation"] is None
    assert datasets["train"].num_examples == 1497 and datasets["train"].name == "digits:train"


def test_load_datasets_rejects_unknown_fields(digits_dir):
    with pytest.raises(fd.DatasetError, match="validaton_size") as info:
        fd.load_datasets(_config(digits_dir, validaton_size=10))
    _one_line(info.value)


def test_split_validation_partitions_the_examples():
    n = 50
    data = fd.ImageData(
        images=np.zeros((n, 2, 2, 1), np.uint8),
        labels=np.arange(n, dtype=np.int32),
        num_bins=2,
        num_classes=n,
        name="fake:train",
    )
    train, validation = fd.split_validation(data, 12, seed=3)
    assert validation.num_examples == 12 and train.num_examples == 38
    assert not set(train.labels) & set(validation.labels)
    assert sorted({*train.labels, *validation.labels}) == list(range(n))
    perm = np.random.RandomState(3).permutation(n)
    np.testing.assert_array_equal(validation.labels, np.sort(perm[-12:]))
    same, none = fd.split_validation(data, 0, seed=3)
    assert same is data and none is None
    with pytest.raises(fd.DatasetError):
        fd.split_validation(data, n, seed=3)


@pytest.mark.parametrize("bad", [10, -1])
def test_labels_outside_num_classes_are_a_one_line_dataset_error(bad):
    with pytest.raises(fd.DatasetError, match=f"fake:train: label {bad} of example 2") as info:
        fd.ImageData(
            images=np.zeros((4, 2, 2, 1), np.uint8),
            labels=np.array([0, 9, bad, 3], np.int32),
            num_bins=2,
            num_classes=10,
            name="fake:train",
        )
    assert "0..9" in _one_line(info.value)


@pytest.mark.parametrize(
    "images, expected",
    [
        (np.full((4, 2, 2, 1), 17, np.uint8), "span 17..17, outside the 17 levels 0..16"),
        (np.full((4, 2, 2, 1), np.nan, np.float32), "integer levels 0..16, got dtype float32"),
    ],
)
def test_images_outside_the_levels_are_a_one_line_dataset_error(images, expected):
    with pytest.raises(fd.DatasetError, match=expected) as info:
        fd.ImageData(
            images=images, labels=np.zeros(4, np.int32), num_bins=17, num_classes=10, name="x"
        )
    _one_line(info.value)


def test_load_split_checks_the_labels_it_reads(digits_dir, monkeypatch):
    as_data_source = loading._as_data_source

    class BadLabel:  # the split's source, with label 10 on record 5
        def __init__(self, source):
            self.source = source

        def __len__(self):
            return len(self.source)

        def __getitem__(self, record):
            return self.__getitems__([record])[0]

        def __getitems__(self, records):
            examples = self.source.__getitems__(records)
            pairs = zip(records, examples, strict=True)
            return [{**e, "label": 10} if r == 5 else e for r, e in pairs]

    monkeypatch.setattr(loading, "_as_data_source", lambda *a: BadLabel(as_data_source(*a)))
    with pytest.raises(fd.DatasetError, match="digits:test: label 10 of example 5") as info:
        fd.load_split("digits", "test", data_dir=digits_dir)
    _one_line(info.value)
    streamed = fd.open_split("digits", "test", data_dir=digits_dir)
    streamed.read([7, 3])  # a read without record 5 passes
    with pytest.raises(fd.DatasetError, match="label 10 of example 2 .1 such of the 2 read") as e:
        streamed.subset([9, 5, 5], "sub").read([0, 2])  # example 2 of the subset: record 5
    _one_line(e.value)


# ----------------------------------------------------------------------------- levels, padding


def test_reduce_bits_like_glow():
    images = np.array([0, 1, 7, 8, 100, 255], np.uint8).reshape(1, 6, 1, 1)
    reduced, levels = fd.reduce_bits(images, 256, 5)
    assert levels == 32 and reduced.dtype == np.uint8
    np.testing.assert_array_equal(reduced.ravel(), [0, 0, 0, 1, 12, 31])
    same, levels = fd.reduce_bits(images, 256, 8)
    assert levels == 256 and np.array_equal(same, images)
    assert fd.reduce_bits(images, 256, None) == (images, 256)
    for bad in (0, 9):
        with pytest.raises(fd.DatasetError):
            fd.reduce_bits(images, 256, bad)
    with pytest.raises(fd.DatasetError, match="17 levels") as info:
        fd.reduce_bits(images, 17, 4, name="digits")
    _one_line(info.value)


def test_pad_images_symmetric_zero_padding():
    images = np.full((2, 28, 28, 1), 7, np.uint8)
    padded = fd.pad_images(images, (32, 32))
    assert padded.shape == (2, 32, 32, 1) and padded.dtype == np.uint8
    np.testing.assert_array_equal(padded[:, 2:30, 2:30], images)
    assert padded.sum() == images.sum()
    odd = fd.pad_images(images, (31, 28))
    np.testing.assert_array_equal(odd[:, 1:29], images)  # 1 row on top, 2 at the bottom
    assert fd.pad_images(images, (28, 28)) is images


def test_pad_to_smaller_than_the_images_is_one_line_error(digits_dir):
    with pytest.raises(fd.DatasetError, match="smaller") as info:
        fd.pad_images(np.zeros((1, 8, 8, 1), np.uint8), (4, 8))
    _one_line(info.value)
    with pytest.raises(fd.DatasetError, match="smaller") as info:
        fd.load_split("digits", "test", data_dir=digits_dir, pad_to=(6, 6))
    _one_line(info.value)


def test_load_split_pads_and_keeps_levels(digits_dir):
    data = fd.load_split("digits", "test", data_dir=digits_dir, pad_to=(10, 12))
    plain = fd.load_split("digits", "test", data_dir=digits_dir)
    assert data.images.shape == (300, 10, 12, 1) and data.num_bins == 17
    np.testing.assert_array_equal(data.images[:, 1:9, 2:10], plain.images)


# ----------------------------------------------------------------------------- errors


def test_unknown_dataset_is_one_line_error_suggesting_digits(tmp_path):
    with pytest.raises(fd.DatasetError) as info:
        fd.load_split("mnsit", "train", data_dir=str(tmp_path))
    message = _one_line(info.value)
    assert "'mnsit'" in message and "'digits'" in message and "'mnist'" in message
    assert isinstance(info.value, ValueError)


def test_unprepared_catalog_dataset_fails_fast_offline(tmp_path, no_network):
    with pytest.raises(fd.DatasetError) as info:
        fd.load_split("mnist", "train", data_dir=str(tmp_path))
    # Few retries (TFDS's own 10 per file, with backoff, took minutes): each of mnist's four
    # files is tried at most twice, one host lookup per try.
    assert 0 < len(no_network) <= 4 * 2, no_network
    message = _one_line(info.value)
    assert "'mnist'" in message and str(tmp_path) in message
    assert f"tfds build mnist --data_dir={tmp_path} --file_format=array_record" in message


def test_unprepared_catalog_dataset_without_download(tmp_path, no_network):
    with pytest.raises(fd.DatasetError, match="download=False") as info:
        fd.load_split("mnist", "test", data_dir=str(tmp_path), download=False)
    assert str(tmp_path) in _one_line(info.value)


def _afhq_folder(root, sizes):
    """A stand-in for AFHQ's extracted folder under ``root``'s manual dir: for each split
    folder and class, one image per (width, height) in ``sizes`` (random RGB)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in ("train", "val"):
        for name in afhq.CLASSES:
            directory = root / "downloads" / "manual" / "afhq" / folder / name
            directory.mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(directory / f"{i}.png")


def test_afhq_reads_its_folder_resized_and_cropped_like_torchvision(tmp_path, no_network):
    """``afhq/64`` from a folder of PNGs (a wide and a tall image per class): the test split
    is val/, labels in the sorted class order, images the shorter side resized to 64 and
    centre-cropped (a 96x80 image: columns 6..69 of its 76x64 resize)."""
    from PIL import Image

    _afhq_folder(tmp_path, [(96, 80), (64, 100)])
    data = fd.load_split("afhq/64", "test", data_dir=str(tmp_path))
    assert data.images.shape == (6, 64, 64, 3) and data.num_bins == 256
    assert data.labels.tolist() == [0, 0, 1, 1, 2, 2]
    wide = tmp_path / "downloads" / "manual" / "afhq" / "val" / "cat" / "0.png"
    resized = np.asarray(Image.open(wide).resize((76, 64), Image.BILINEAR))
    np.testing.assert_array_equal(data.images[0], resized[:, 6:70])
    assert fd.load_split("afhq/64", "train", data_dir=str(tmp_path)).images.shape[0] == 6


def test_afhq_without_its_folder_is_one_line_error_saying_where_it_goes(tmp_path, no_network):
    with pytest.raises(fd.DatasetError) as info:
        fd.load_split("afhq/64", "test", data_dir=str(tmp_path))
    message = _one_line(info.value)
    assert "its files are not there" in message
    assert f"{tmp_path}/downloads/manual/afhq/" in message and "tfds build" not in message


def test_unknown_split_is_one_line_error(digits_dir):
    with pytest.raises(fd.DatasetError, match="'validation'") as info:
        fd.load_split("digits", "validation", data_dir=digits_dir)
    _one_line(info.value)


def test_default_data_dir_follows_tfds(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert fd.default_data_dir() == str(tmp_path)
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert fd.default_data_dir().endswith("tensorflow_datasets")


# ----------------------------------------------------------------------------- catalog (mocked)


def test_catalog_dataset_loads_through_load_split_under_mock_data(tmp_path, no_network):
    with data_testing.mock_data(num_examples=12):
        data = fd.load_split("mnist", "train", data_dir=str(tmp_path))
        reduced = fd.load_split("mnist", "test", data_dir=str(tmp_path), n_bits=5, pad_to=(32, 32))
        cifar = fd.load_datasets(
            ml_collections.ConfigDict({"name": "cifar10", "validation_size": 2})
        )
    assert data.images.shape == (12, 28, 28, 1) and data.images.dtype == np.uint8
    assert (data.num_bins, data.num_classes, data.name) == (256, 10, "mnist:train")
    assert data.labels.dtype == np.int32 and data.labels.max() < 10
    assert reduced.images.shape == (12, 32, 32, 1) and reduced.num_bins == 32
    assert reduced.images.max() < 32
    assert cifar["train"].images.shape == (10, 32, 32, 3)
    assert cifar["validation"].num_examples == 2 and cifar["test"].num_examples == 12


# ----------------------------------------------------------------------------- streamed splits


def test_streamed_splits_read_what_load_datasets_loads(digits_dir):
    config = _config(digits_dir)
    whole = fd.load_datasets(config)
    streamed = fd.load_datasets(config, stream=True)
    for key in ("train", "validation", "test"):
        s, w = streamed[key], whole[key]
        assert isinstance(s, fd.StreamedSplit) and isinstance(w, fd.ImageData)
        assert (s.name, s.num_examples, s.image_shape, s.num_bins, s.num_classes) == (
            w.name, w.num_examples, w.image_shape, w.num_bins, w.num_classes
        )  # fmt: skip
        order = np.random.RandomState(0).permutation(w.num_examples)[:37]
        for got, want in zip(s.read(order), w.read(order), strict=True):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(s.labels, w.labels)
        np.testing.assert_array_equal(s.materialize().images, w.images)


def test_streamed_split_keeps_what_it_decodes_within_its_budget(digits_dir):
    reads = []

    def counting(split):
        source = split._source
        split._source = type("Counting", (), {
            "__len__": lambda self: len(source),
            "__getitems__": lambda self, r: reads.append(list(r)) or source.__getitems__(r),
        })()  # fmt: skip
        return split

    cached = counting(fd.open_split("digits", "test", data_dir=digits_dir))
    uncached = fd.open_split("digits", "test", data_dir=digits_dir, cache_bytes=0)
    first = cached.read([4, 9, 4])
    assert reads == [[4, 9]]  # each record decoded once
    again = cached.read([9, 4, 2])
    assert reads == [[4, 9], [2]]  # only the example not read before
    for got, idx in ((first, [4, 9, 4]), (again, [9, 4, 2])):
        for a, b in zip(got, uncached.read(idx), strict=True):
            np.testing.assert_array_equal(a, b)
    small = counting(fd.open_split("digits", "test", data_dir=digits_dir, cache_bytes=100))
    small.read([4])
    small.read([4])
    assert reads[-2:] == [[4], [4]]  # over budget (300 x 64 bytes): decoded on every read


def test_streamed_labels_are_read_without_decoding_the_images(digits_dir):
    """``labels`` parses the records with their images left undecoded (``SkipDecoding``): the
    decoding source is never asked, and the labels are those of a whole read, in the
    subset's order; a label outside the classes is the usual one-line error."""
    whole = fd.load_split("digits", "train", data_dir=digits_dir)
    split = fd.open_split("digits", "train", data_dir=digits_dir)
    split._source = None  # any read through the decoding source would fail
    np.testing.assert_array_equal(split.labels, whole.labels)
    order = np.random.RandomState(1).permutation(whole.num_examples)[:50]
    subset = split.subset(order, "digits:part")
    np.testing.assert_array_equal(subset.labels, whole.labels[order])
    fewer = fd.open_split("digits", "train", data_dir=digits_dir)
    fewer.num_classes = 5
    with pytest.raises(fd.DatasetError, match=r"outside 0\.\.4") as e:
        _ = fewer.labels
    assert "\n" not in str(e.value)


def test_streamed_labels_under_mock_data_read_the_whole_records(tmp_path, no_network):
    """tfds's mock data cannot skip the image decoding without TensorFlow: the labels are
    read from the whole records instead."""
    with data_testing.mock_data(num_examples=12):
        whole = fd.load_split("mnist", "test", data_dir=str(tmp_path))
        streamed = fd.open_split("mnist", "test", data_dir=str(tmp_path))
        np.testing.assert_array_equal(streamed.labels, whole.labels)


@pytest.mark.parametrize("stream", [False, True])
def test_unlabelled_is_the_split_with_every_label_zero(digits_dir, stream):
    data = fd.load_datasets(_config(digits_dir), stream=stream)["test"]
    view = fd.Unlabelled(data)
    images, labels = view.read([3, 1, 3])
    np.testing.assert_array_equal(images, data.read([3, 1, 3])[0])
    assert labels.tolist() == [0, 0, 0] and labels.dtype == np.int32
    assert view.num_classes == 1 and data.num_classes == 10
    assert (view.num_examples, view.image_shape, view.num_bins, view.name) == (
        data.num_examples, data.image_shape, data.num_bins, data.name
    )  # fmt: skip
    assert not view.labels.any() and view.labels.shape == (data.num_examples,)


def test_streamed_catalog_split_reduces_and_pads_per_read(tmp_path, no_network):
    with data_testing.mock_data(num_examples=12):
        whole = fd.load_split("mnist", "test", data_dir=str(tmp_path), n_bits=5, pad_to=(32, 32))
        streamed = fd.open_split("mnist", "test", data_dir=str(tmp_path), n_bits=5, pad_to=(32, 32))
        images, labels = streamed.read([11, 0, 4])
    assert streamed.image_shape == (32, 32, 1) and streamed.num_bins == 32
    np.testing.assert_array_equal(images, whole.images[[11, 0, 4]])
    np.testing.assert_array_equal(labels, whole.labels[[11, 0, 4]])


# ----------------------------------------------------------------------------- batching


def test_batch_indices_cover_each_example_once_per_epoch():
    n, batch_size, seed = 10, 3, 7
    per_epoch = fd.steps_per_epoch(n, batch_size)
    assert per_epoch == 3
    epochs = []
    for epoch in range(3):
        steps = range(epoch * per_epoch, (epoch + 1) * per_epoch)
        batches = [fd.batch_indices(n, batch_size, seed, step) for step in steps]
        seen = np.concatenate(batches)
        assert all(b.shape == (batch_size,) for b in batches)
        assert len(set(seen)) == per_epoch * batch_size  # each example at most once
        np.testing.assert_array_equal(seen, fd.epoch_permutation(n, seed, epoch)[:9])
        epochs.append(seen)
    assert not np.array_equal(epochs[0], epochs[1])  # a fresh permutation each epoch
    assert sorted(fd.epoch_permutation(n, seed, 0)) == list(range(n))


def test_batch_indices_are_deterministic_and_stateless():
    steps = (0, 5, 31, 31, 500)
    a = [fd.batch_indices(1000, 32, 0, step) for step in steps]
    batching._cached_permutation.cache_clear()  # nothing carried between calls
    b = [fd.batch_indices(1000, 32, 0, step) for step in reversed(steps)][::-1]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[2], a[3])
    assert not np.array_equal(fd.batch_indices(1000, 32, 1, 0), a[0])  # the seed matters
    # Pinned values: the permutation stream must not change between NumPy versions.
    np.testing.assert_array_equal(fd.epoch_permutation(8, 0, 0), [7, 3, 6, 0, 5, 1, 2, 4])
    np.testing.assert_array_equal(fd.epoch_permutation(8, 0, 1), [1, 0, 7, 5, 6, 3, 2, 4])
    np.testing.assert_array_equal(fd.batch_indices(8, 4, 0, 3), [6, 3, 2, 4])  # epoch 1, 2nd
    with pytest.raises(ValueError):
        fd.batch_indices(10, 11, 0, 0)


# ----------------------------------------------------------------------------- OOD companions


def test_photo_patches_recipe_on_a_hand_made_photo():
    # 16x32 RGB -> luma -> 2x2 block means (8x16) -> floor(g * 16/255 + 1/2) -> two 8x8 tiles.
    photo = np.zeros((17, 33, 3), np.uint8)  # the 17th row and 33rd column are cropped away
    photo[:, :16] = 255  # left tile white: level 16
    photo[:16, 16:] = (255, 0, 0)  # right tile pure red: luma 0.299 * 255 -> level 4.784 -> 5
    photo[0, 16] = (0, 0, 0)  # 1 black + 3 red in a 2x2 block: 0.75 * 76.245 -> 3.59 -> 4
    photo[16, :] = 128  # cropped: no effect
    images, labels = digits_ood.photo_patches([photo, photo[:, :15]])
    assert images.shape == (2, 8, 8) and images.dtype == np.uint8  # 17x15: no 16x16 tile
    np.testing.assert_array_equal(images[0], np.full((8, 8), 16))
    expected = np.full((8, 8), 5)
    expected[0, 0] = 4
    np.testing.assert_array_equal(images[1], expected)
    np.testing.assert_array_equal(labels, [0, 0])


def _check_digits_like(data, name, split, size):
    """8x8x1 uint8 images with the digits' 17 levels, all of them used."""
    assert data.images.shape == (size, 8, 8, 1) and data.images.dtype == np.uint8
    assert data.num_bins == 17 and data.images.min() == 0 and data.images.max() == 16
    assert data.name == f"{name}:{split}" and data.labels.dtype == np.int32


def test_photo_patches_load_offline_as_documented(digits_dir, no_network):
    images, labels = digits_ood.load_photo_patches()  # recomputed from the photographs
    assert images.shape == (2080, 8, 8) and np.bincount(labels).tolist() == [1040, 1040]
    indices = digits_ood.patch_split_indices(2080)
    np.testing.assert_array_equal(
        np.r_[indices["train"], indices["test"]], np.random.RandomState(0).permutation(2080)
    )
    # The seeded split is pinned (NumPy keeps the RandomState stream frozen).
    sizes, label_counts = {"train": 1780, "test": 300}, {"train": [887, 893], "test": [153, 147]}
    for split, size in sizes.items():
        data = fd.load_split("photo_patches", split, data_dir=digits_dir)  # prepared offline
        _check_digits_like(data, "photo_patches", split, size)
        assert data.num_classes == 2 and np.bincount(data.labels).tolist() == label_counts[split]
        np.testing.assert_array_equal(data.images[..., 0], images[indices[split]])
        np.testing.assert_array_equal(data.labels, labels[indices[split]])
    # Natural patches are smooth (median spread within a patch 0.48 levels; digits 6.0).
    assert np.median(images.std(axis=(1, 2))) < 2


def test_digits_inverted_loads_offline_as_digits_with_levels_inverted(digits_dir, no_network):
    for split, size in {"train": 1497, "test": 300}.items():
        plain = fd.load_split("digits", split, data_dir=digits_dir)
        inverted = fd.load_split("digits_inverted", split, data_dir=digits_dir)  # offline
        _check_digits_like(inverted, "digits_inverted", split, size)
        np.testing.assert_array_equal(inverted.images, 16 - plain.images)
        np.testing.assert_array_equal(inverted.labels, plain.labels)
        assert inverted.num_classes == 10


# ----------------------------------------------------------------------------- grain pipeline


def _tiny_data(n=10):
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
    return fd.ImageData(images, np.arange(n, dtype=np.int32) % 3, 17, 3, "tiny")


def test_training_batches_are_the_seeded_batches_split_over_processes():
    data, batch_size, seed = _tiny_data(), 4, 3
    dataset = pipeline.training_batches(data, batch_size, seed, num_batches=7)
    halves = [
        pipeline.training_batches(data, batch_size, seed, 7, rows=slice(p * 2, p * 2 + 2))
        for p in range(2)
    ]
    assert len(dataset) == 7
    for step in range(7):
        want = fd.batch_indices(10, batch_size, seed, step)
        np.testing.assert_array_equal(dataset[step]["image"].ravel(), want)
        np.testing.assert_array_equal(dataset[step]["label"], want % 3)
        assert dataset[step]["label"].dtype == np.int32
        # Two processes each read their half; together they are the global batch.
        np.testing.assert_array_equal(
            np.concatenate([h[step]["image"] for h in halves]), dataset[step]["image"]
        )
    with pytest.raises(ConfigError, match="larger than the dataset"):
        pipeline.training_batches(data, 11, seed, num_batches=1)


def test_training_iterator_resumes_from_its_saved_state():
    dataset = pipeline.training_batches(_tiny_data(), 4, 0, num_batches=9)
    uninterrupted = [b["image"].ravel() for b in pipeline.start_batches(dataset, 0)]
    assert len(uninterrupted) == 9
    first = pipeline.start_batches(dataset, 0)
    for _ in range(4):
        next(first)
    state = first.get_state()
    assert pipeline.next_index(state) == 4
    resumed = pipeline.start_batches(dataset, state)
    rest = [b["image"].ravel() for b in resumed]
    for got, want in zip(rest, uninterrupted[4:], strict=True):
        np.testing.assert_array_equal(got, want)
