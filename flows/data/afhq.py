"""``afhq``: Animal Faces-HQ (Choi et al. 2020, StarGAN v2) from its extracted folder, as a TFDS
builder that needs no network and no TensorFlow.

AFHQ cannot be downloaded by TFDS. Put the extracted dataset (the folders ``train/`` and
``val/``, each with ``cat/``, ``dog/`` and ``wild/`` of 512x512 JPEGs) in
``<data_dir>/downloads/manual/afhq/``; the first read prepares the array_record copy.

Images as ml-tarflow's ``evaluate_bpd.py`` and trainer read them with torchvision: the
shorter side resized to the config's size (PIL bilinear, which antialiases when it shrinks),
then the centre square of that size; RGB, 8 bits (256 levels). Labels are the class folders
in sorted order, as ``torchvision.datasets.ImageFolder`` numbers them: cat 0, dog 1, wild 2
(the order of ml-tarflow's AFHQ classes). Splits: ``train`` (``train/``) and ``test``
(``val/``, the split ml-tarflow evaluates bits/dim on); examples in sorted file order.

Configs: ``afhq/256`` (ml-tarflow's AFHQ models; the default), ``afhq/128``, ``afhq/64``.
"""

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from flows.data import tfds_compat
from flows.data.digits import encode_png

CLASSES = ("cat", "dog", "wild")
SPLIT_FOLDERS = {"train": "train", "test": "val"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
INSTRUCTIONS = (
    "put AFHQ's extracted train/ and val/ folders (each with cat/, dog/, wild/) in "
    "<data_dir>/downloads/manual/afhq/"
)


def load_image(path: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the file's RGB image, its shorter side resized to ``size``
    (bilinear), then centre-cropped to a square (torchvision's ``Resize`` + ``CenterCrop``)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        if (w, h) != (size, size):
            if w <= h:
                new = (size, int(size * h / w))
            else:
                new = (int(size * w / h), size)
            image = image.resize(new, Image.BILINEAR)
            w, h = image.size
            top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
            image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, np.uint8)


def list_examples(root: str, folder: str) -> list[tuple[str, int]]:
    """``(path, label)`` of every image under ``root/folder/<class>/``, in sorted order."""
    examples = []
    for label, name in enumerate(CLASSES):
        directory = os.path.join(root, folder, name)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"no folder {directory}: {INSTRUCTIONS}")
        files = sorted(f for f in os.listdir(directory) if f.lower().endswith(IMAGE_SUFFIXES))
        examples += [(os.path.join(directory, f), label) for f in files]
    return examples


@dataclasses.dataclass
class AfhqConfig(tfds.core.BuilderConfig):
    size: int = 256


class Afhq(tfds_compat.QuietPreparation, tfds.core.GeneratorBasedBuilder):
    """AFHQ (cat, dog, wild) from ``<data_dir>/downloads/manual/afhq``, resized and
    centre-cropped to the config's size."""

    PREPARING = "preparing {name} from its folder into {data_dir} (once)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "AFHQ v1 folders; shorter side resized, centre crop."}
    BUILDER_CONFIGS = [AfhqConfig(name=str(s), size=s) for s in (256, 128, 64)]

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.size
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Animal Faces-HQ at {size}x{size} (cat, dog, wild).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=list(CLASSES)),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/clovaai/stargan-v2",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        root = os.path.join(dl_manager.manual_dir, "afhq")
        return {
            split: self._generate_examples(list_examples(root, folder))
            for split, folder in SPLIT_FOLDERS.items()
        }

    def _generate_examples(self, examples):
        size = self.builder_config.size
        for i, (path, label) in enumerate(examples):
            yield i, {"image": encode_png(load_image(path, size)), "label": label}
