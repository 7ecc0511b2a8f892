"""The training input pipeline, through grain.

Global batch ``step`` is the examples ``batch_indices(N, B, seed, step)`` (the seeded epoch
permutations of ``flows.data.batching``, kept so that every run, old or new, resumes on the
same batches); this process reads only its own rows of it (``rows``: the slice of the global
batch its devices hold), so with P processes each host reads B/P examples per step, never the
split. The pipeline is a ``grain.MapDataset`` over steps::

    MapDataset.range(num_steps).map(step -> this process's rows of global batch `step`)

read ahead by ``to_iter_dataset`` (``READ_THREADS`` threads, ``PREFETCH_BATCHES`` batches
buffered), whose iterator state (``{'next_index': step}``) the trainer saves with every
checkpoint and restores on resume (``start_batches``), so a resumed run reads exactly the
batches an uninterrupted one would have.

A split is anything with ``num_examples`` and ``read(indices) -> (images, labels)``: a
``StreamedSplit`` (read from the TFDS source on demand) or an ``ImageData`` (in memory).
"""

from __future__ import annotations

import grain
import numpy as np

from flows.data.batching import batch_indices

# Threads reading batches ahead, and how many batches they may hold. Reading a digits batch
# takes microseconds and a 64-image 32x32 PNG batch about 5 ms (one core): two threads keep
# ahead of any training step here without taking the cores XLA computes on.
READ_THREADS = 2
PREFETCH_BATCHES = 4


def training_batches(
    split, batch_size: int, seed: int, num_steps: int, *, rows: slice = slice(None)
) -> grain.MapDataset:
    """Element ``step`` (0 <= step < num_steps): ``{'image', 'label' (int32)}``, the rows
    ``rows`` of global batch ``step`` of ``split``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    num_examples = split.num_examples

    def read(step: int) -> dict:
        indices = batch_indices(num_examples, batch_size, seed, int(step))[rows]
        images, labels = split.read(indices)
        return {"image": images, "label": np.asarray(labels, np.int32)}

    batch_indices(num_examples, batch_size, seed, 0)  # a bad batch size fails here, not later
    return grain.MapDataset.range(num_steps).map(read)


def start_batches(dataset: grain.MapDataset, state: dict | int):
    """An iterator over ``dataset`` read ahead in threads, at ``state``: a saved
    ``iterator.get_state()`` or the index of the next element."""
    if isinstance(state, int):
        state = {"next_index": state}
    options = grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=PREFETCH_BATCHES)
    iterator = iter(dataset.to_iter_dataset(options))
    iterator.set_state(dict(state))
    return iterator


def next_index(state: dict) -> int:
    """The element a saved iterator state reads next."""
    return int(state["next_index"])
