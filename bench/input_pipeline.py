"""Throughput of the training input pipeline (``flows.data.pipeline``), images/s.

Reads global batches of a config's train split exactly as the trainer does (a
``StreamedSplit`` over the TFDS array_record source: record reads, PNG decoding, bit
reduction and padding), three ways:

  decode_images_per_s     one thread, batch after batch, ``split.read(batch_indices(...))``
                          with the decoded-example cache off: what every read costs on a
                          split too large to cache, and the first epoch of any split
  pipeline_images_per_s   the trainer's iterator (``pipeline.start_batches``: grain,
                          ``READ_THREADS`` threads, ``PREFETCH_BATCHES`` batches ahead),
                          cache off, drained as fast as it yields
  cached_images_per_s     the trainer's iterator on the split as the trainer opens it
                          (cached: ``flows.data.source.CACHE_BYTES``; read in the calling
                          thread), after one epoch
  labels_per_s            the pass over the split's labels (``split.labels``: a conditional
                          model's p(y)), records parsed with their images left undecoded
  labels_decoded_per_s    the same labels read with their images decoded (``split.chunks``:
                          how ``labels`` read them before, and where the source cannot skip)

Datasets (``--dataset``):
  digits       the data of ``--config`` (default ``configs/glow_digits.py``: 8x8 PNGs)
  mnist_like   case (a)'s shape: 28x28x1 uint8 PNG records, padded to 32x32 when read as
               ``pad_to=(32, 32)`` MNIST is. MNIST itself needs a download; this builder
               writes 10,000 records offline (sklearn digits scaled x3 into a 28x28 frame
               at a random offset, values x15) into a temporary data_dir.

The last line printed is the JSON record (with the CPU's model name); ``--out DIR`` also
writes ``DIR/input_pipeline_<dataset>.json``. Compare with the training throughput of the
same configuration (README "Speed"; the trainer logs ``images_per_s``): the pipeline runs
beside the compiled step, so it costs training nothing while it yields faster than the step
consumes.

  python -m bench.input_pipeline --dataset=digits
  python -m bench.input_pipeline --dataset=mnist_like
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds

from flows import data as data_lib
from flows.data import digits as digits_lib
from flows.data import pipeline, source
from flows.provenance import cpu_info

MNIST_LIKE_RECORDS = 10_000


class MnistLike(tfds.core.GeneratorBasedBuilder):
    """28x28x1 uint8 PNG records (256 levels) made offline from sklearn's digits."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="sklearn digits x3 in a 28x28 frame (benchmark records, not MNIST)",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        rng = np.random.RandomState(0)
        for i in range(MNIST_LIKE_RECORDS):
            j = i % len(bunch.target)
            big = np.kron(bunch.images[j], np.ones((3, 3))) * 15  # 24x24, 0..240
            frame = np.zeros((28, 28), np.uint8)
            dy, dx = rng.randint(0, 5, size=2)
            frame[dy : dy + 24, dx : dx + 24] = big.astype(np.uint8)
            yield i, {"image": digits_lib.encode_png(frame), "label": int(bunch.target[j])}


def prepare_mnist_like(data_dir: str | None = None) -> str:
    """``data_dir`` (default: a new temporary directory) with the ``mnist_like`` records
    prepared in it, for this benchmark or a training (``--config.data.name=mnist_like
    --config.data.data_dir=...``)."""
    data_dir = data_dir or tempfile.mkdtemp(prefix="mnist_like_")
    builder = MnistLike(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(file_format="array_record")
    return data_dir


def _train_split(args, data_dir: str | None, cache_bytes: int):
    if args.dataset == "mnist_like":
        return data_lib.open_split(
            "mnist_like",
            "train",
            data_dir=data_dir,
            pad_to=(32, 32),
            download=False,
            cache_bytes=cache_bytes,
        )
    name, _, variant = args.config.partition(":")  # configs/<name>.py[:variant], as --config
    module = importlib.import_module("configs." + os.path.splitext(os.path.basename(name))[0])
    config = module.get_config(variant or None)
    split = data_lib.load_datasets(config.data, stream=True)["train"]
    return split.subset(np.arange(split.num_examples), split.name, cache_bytes=cache_bytes)


def _drain(split, batch_size: int, batches: int) -> float:
    """Images/s of the trainer's iterator over ``batches`` batches (after its first)."""
    dataset = pipeline.training_batches(split, batch_size, 0, num_batches=batches + 1)
    iterator = pipeline.start_batches(dataset, 0, threads=pipeline.read_threads(split))
    next(iterator)  # threads started, first batch read
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("digits", "mnist_like"), default="digits")
    p.add_argument("--config", default="configs/glow_digits.py", help="for --dataset=digits")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--batches", type=int, default=400, help="batches timed each way")
    p.add_argument("--out", default=None, help="directory for input_pipeline_<dataset>.json")
    args = p.parse_args(argv)

    data_dir = prepare_mnist_like() if args.dataset == "mnist_like" else None
    split = _train_split(args, data_dir, cache_bytes=0)
    n, b = split.num_examples, args.batch_size
    split.read(data_lib.batch_indices(n, b, 0, 0))  # warm: file handles, decoder
    start = time.perf_counter()
    for step in range(args.batches):
        split.read(data_lib.batch_indices(n, b, 0, step))
    decode = args.batches * b / (time.perf_counter() - start)
    piped = _drain(split, b, args.batches)

    start = time.perf_counter()
    labels = _train_split(args, data_dir, cache_bytes=0).labels
    labels_fast = n / (time.perf_counter() - start)
    start = time.perf_counter()
    decoded = np.concatenate([chunk_labels for *_, chunk_labels in split.chunks()])
    labels_decoded = n / (time.perf_counter() - start)
    if not np.array_equal(labels, decoded):
        raise AssertionError("the labels read without the images differ from the decoded ones")

    cached_split = _train_split(args, data_dir, cache_bytes=source.CACHE_BYTES)
    cached_split.read(np.arange(n))  # one epoch's decoding
    cached = _drain(cached_split, b, args.batches)

    record = {
        "benchmark": "input_pipeline",
        "dataset": args.dataset,
        "split": split.name,
        "image_shape": list(split.image_shape),
        "num_examples": n,
        "batch_size": b,
        "batches": args.batches,
        "decode_images_per_s": round(decode, 1),
        "pipeline_images_per_s": round(piped, 1),
        "cached_images_per_s": round(cached, 1),
        "labels_per_s": round(labels_fast, 1),
        "labels_decoded_per_s": round(labels_decoded, 1),
        "read_threads": pipeline.READ_THREADS,  # of pipeline_images_per_s
        "prefetch_batches": pipeline.PREFETCH_BATCHES,
        "cpu": cpu_info()["model"],
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.out:
        from bench.records import write_record

        write_record(args.out, f"input_pipeline_{args.dataset}.json", record)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
