"""Offline out-of-distribution companions of ``digits``: 8x8x1 images with 17 levels (0..16).

Both are TFDS builders prepared from data that scikit-learn ships (no network, no
TensorFlow), registered by importing ``flows.data``, so ``config.data.name=<name>`` and
``experiments.evaluate --dataset=<name>`` read them like ``digits``. Preparation is
deterministic: no random crop, and the splits come from a seeded permutation (NumPy's legacy
``RandomState``, frozen across versions); shuffling at preparation is disabled, so record
``i`` of a split is example ``split_indices()[split][i]`` of the construction below.

``photo_patches``: 2080 8x8 greyscale patches of natural images, the two photographs
``sklearn.datasets.load_sample_images()`` bundles (``china.jpg`` then ``flower.jpg``, each
427x640 RGB uint8, decoded by PIL). Per photograph:

  1. grey ``g = 0.299 R + 0.587 G + 0.114 B`` (ITU-R 601 luma; float64, 0..255);
  2. crop to the top-left 416x640 (a multiple of 16 in both directions);
  3. 2x2 block means, giving 208x320;
  4. levels ``v = floor(g * 16 / 255 + 1/2)`` (0..16, the digits' 17 levels);
  5. non-overlapping 8x8 tiles in row-major order: 26 x 40 = 1040 patches.

  So a patch covers a 16x16-pixel square of the photograph. Label: 0 for china, 1 for flower.
  Split: ``RandomState(0).permutation(2080)``; ``train`` the first 1780, ``test`` the last
  300. Unlike digits (about half of all values are 0; the standard deviation of the values
  within an image has median 6.0 levels), most patches are smooth (median 0.48). The JPEG
  decoder (PIL's libjpeg) may round a pixel differently on another version, so the exact
  values are reproducible per installation, not across every one.

``digits_inverted``: ``digits`` with its levels inverted, ``v -> 16 - v`` (white background,
dark strokes), the same 1797 images, labels and split as ``digits`` (1497 train / 300 test).
The same shapes with the background flipped: a likelihood model of digits should find these
unlikely, and whether it does probes the known failure of flows to rank simple OOD data as
less likely (Nalisnick et al. 2019, "Do deep generative models know what they don't know?").
"""

import numpy as np
import tensorflow_datasets as tfds

from flows.data import digits as _digits
from flows.data import tfds_compat  # noqa: F401  (importlib_resources shim before TFDS use)

NUM_BINS = _digits.NUM_BINS  # 17: values 0..16
IMAGE_SHAPE = _digits.IMAGE_SHAPE  # (8, 8, 1)

PATCH = 8  # patch side after downsampling
BLOCK = 2  # side of the pixel blocks averaged into one value
PATCH_NUM_TEST = 300
PATCH_SPLIT_SEED = 0
PHOTOS = ("china.jpg", "flower.jpg")  # label = index
LUMA = (0.299, 0.587, 0.114)


def photo_patches(photos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The patches of the photographs (each (H, W, 3) uint8), in construction order.

    Steps 1-5 of the module docstring: luma, crop to multiples of ``BLOCK * PATCH``, mean of
    ``BLOCK x BLOCK`` blocks, ``floor(g * 16 / 255 + 1/2)``, row-major 8x8 tiles. Returns
    ``(N, 8, 8)`` uint8 levels 0..16 and ``(N,)`` int64 labels (the photograph's index).
    """
    images, labels = [], []
    side = BLOCK * PATCH
    for label, photo in enumerate(photos):
        grey = np.asarray(photo, np.float64) @ np.asarray(LUMA)
        h, w = (grey.shape[0] // side) * side, (grey.shape[1] // side) * side
        grey = grey[:h, :w].reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).mean(axis=(1, 3))
        levels = np.floor(grey * (NUM_BINS - 1) / 255.0 + 0.5).astype(np.uint8)
        tiles = levels.reshape(h // side, PATCH, w // side, PATCH).transpose(0, 2, 1, 3)
        images.append(tiles.reshape(-1, PATCH, PATCH))
        labels.append(np.full(len(images[-1]), label, np.int64))
    return np.concatenate(images), np.concatenate(labels)


def load_photo_patches() -> tuple[np.ndarray, np.ndarray]:
    """``photo_patches`` of scikit-learn's bundled sample photographs (china, flower)."""
    from sklearn.datasets import load_sample_images  # slow import: only when preparing

    bunch = load_sample_images()
    names = [name.replace("\\", "/").rsplit("/", 1)[-1] for name in bunch.filenames]
    if tuple(names) != PHOTOS:
        raise ValueError(f"expected scikit-learn's sample images {PHOTOS}, got {names}")
    return photo_patches(bunch.images)


def patch_split_indices(num_examples: int) -> dict[str, np.ndarray]:
    """The patch indices of each split, in record order (the last 300 of a seeded shuffle)."""
    perm = np.random.RandomState(PATCH_SPLIT_SEED).permutation(num_examples)
    return {"train": perm[:-PATCH_NUM_TEST], "test": perm[-PATCH_NUM_TEST:]}


def _features(label_names: list[str]) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=label_names),
        }
    )


class PhotoPatches(tfds.core.GeneratorBasedBuilder):
    """8x8 greyscale patches (17 levels) of scikit-learn's two sample photographs."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "2x2-block-mean 8x8 tiles of china.jpg and flower.jpg; 1780/300."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Non-overlapping 8x8 patches of scikit-learn's sample photographs china.jpg "
                "and flower.jpg: ITU-R 601 luma, 2x2 block means, floor(g*16/255 + 1/2) "
                "(17 levels, as digits); RandomState(0) permutation, last 300 test."
            ),
            features=_features(["china", "flower"]),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/"
            "sklearn.datasets.load_sample_images.html",
            metadata=tfds.core.MetadataDict(num_bins=NUM_BINS, split_seed=PATCH_SPLIT_SEED),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        images, labels = load_photo_patches()
        return {
            split: self._generate_examples(images[idx], labels[idx])
            for split, idx in patch_split_indices(len(images)).items()
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": _digits.encode_png(image), "label": int(label)}


class DigitsInverted(tfds.core.GeneratorBasedBuilder):
    """``digits`` with levels inverted (v -> 16 - v); same images, labels and split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn digits, v -> 16 - v; the digits split."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "scikit-learn's 8x8 digits with levels inverted (v -> 16 - v), with the split "
                "of 'digits': RandomState(0).permutation(1797), first 1497 train, last 300 test."
            ),
            features=_features([str(d) for d in range(10)]),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            citation=_digits.CITATION,
            metadata=tfds.core.MetadataDict(num_bins=NUM_BINS, split_seed=_digits.SPLIT_SEED),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        images, labels = _digits.load_sklearn_digits()
        inverted = (NUM_BINS - 1) - images
        return {
            split: self._generate_examples(inverted[idx], labels[idx])
            for split, idx in _digits.split_indices().items()
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": _digits.encode_png(image), "label": int(label)}
