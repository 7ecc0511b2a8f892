"""The offline ``digits`` dataset: scikit-learn's 8x8 handwritten digits as a TFDS builder.

Source: ``sklearn.datasets.load_digits()`` (the UCI "Optical Recognition of Handwritten Digits"
test set: 1797 images, 8x8, one channel, integer values 0..16, labels 0..9). The data ship with
scikit-learn, so preparing this dataset needs no network and no TensorFlow.

Features (same layout as the catalog ``mnist``):
    image: ``Image(shape=(8, 8, 1), dtype=uint8)``, PNG-encoded, values 0..16 (17 levels).
    label: ``ClassLabel(num_classes=10)``.
``info.metadata['num_bins'] == 17`` records the number of levels (the loader reads it).

Fixed split. ``perm = np.random.RandomState(0).permutation(1797)`` (the legacy RandomState
stream, which NumPy keeps frozen across versions); ``train`` is ``perm[:1497]`` and ``test`` is
``perm[1497:]`` (300 examples). Shuffling at preparation is disabled, so record ``i`` of a split
is sklearn example ``split_indices()[split][i]``.

Register the builder by importing ``flows.data``; then ``tfds.builder('digits', data_dir=...)``
finds it and ``download_and_prepare(file_format='array_record')`` writes it in well under a
second.
"""

import io

import numpy as np
import tensorflow_datasets as tfds

from flows.data import tfds_compat  # importlib_resources shim before TFDS use; QuietPreparation

NUM_EXAMPLES = 1797
NUM_TEST = 300
NUM_TRAIN = NUM_EXAMPLES - NUM_TEST  # 1497
SPLIT_SEED = 0
NUM_BINS = 17  # values 0..16
IMAGE_SHAPE = (8, 8, 1)

# The dataset's citation, which the digits builder and its OOD companions (digits_ood) give.
CITATION = """@misc{alpaydin1998optical,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi = {10.24432/C50P49}
}"""


def split_indices() -> dict[str, np.ndarray]:
    """The sklearn example indices of each split, in record order."""
    perm = np.random.RandomState(SPLIT_SEED).permutation(NUM_EXAMPLES)
    return {"train": perm[:NUM_TRAIN], "test": perm[NUM_TRAIN:]}


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """The sklearn digits: images (1797, 8, 8) uint8 in 0..16 and labels (1797,) int64 (what
    the `digits` builder and its OOD companions are made from)."""
    from sklearn.datasets import load_digits  # slow import: only when preparing

    bunch = load_digits()
    images = bunch.images
    if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 16:
        raise ValueError("sklearn digits are expected to hold integers in 0..16")
    return images.astype(np.uint8), bunch.target.astype(np.int64)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) or (H, W, 3) uint8 image, encoded with PIL (TFDS would need
    TensorFlow)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")  # 2-D uint8 -> mode "L"
    return buffer.getvalue()


class Digits(tfds_compat.QuietPreparation, tfds.core.GeneratorBasedBuilder):
    """scikit-learn 8x8 digits (17 levels), fixed seeded split: 1497 train / 300 test.
    Preparing it prints one line of its own (``tfds_compat.QuietPreparation``)."""

    PREPARING = "preparing the offline digits dataset in {data_dir} (once, a few seconds)"

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn digits; RandomState(0) permutation, 1497 train / 300 test."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "scikit-learn's 8x8 handwritten digits (values 0..16, 17 levels), with a fixed "
                "split: RandomState(0).permutation(1797), first 1497 train, last 300 test."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            citation=CITATION,
            metadata=tfds.core.MetadataDict(num_bins=NUM_BINS, split_seed=SPLIT_SEED),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        images, labels = load_sklearn_digits()
        return {
            split: self._generate_examples(images[idx], labels[idx])
            for split, idx in split_indices().items()
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": encode_png(image), "label": int(label)}
