"""The training input pipeline, through grain.

Global batch ``step`` is the examples ``batch_indices(N, B, seed, step)`` (the seeded epoch
permutations of ``flows.data.batching``, kept so that every run, old or new, resumes on the
same batches); this process reads only its own rows of it (``rows``: the slice of the global
batch its devices hold), so with P processes each host reads B/P examples per step, never the
split. The pipeline is a ``grain.MapDataset`` over steps::

    MapDataset.range(num_batches).map(step -> this process's rows of global batch `step`)

read by ``to_iter_dataset`` (ahead, in ``read_threads(split)`` threads, for a split that
decodes every read), whose iterator state (``{'next_index': step}``) the trainer saves with every
checkpoint and restores on resume (``start_batches``), so a resumed run reads exactly the
batches an uninterrupted one would have.

A split is anything with ``num_examples`` and ``read(indices) -> (images, labels)``: a
``StreamedSplit`` (read from the TFDS source on demand) or an ``ImageData`` (in memory).
"""

from __future__ import annotations

import grain
import numpy as np

from flows.data.batching import batch_indices

# Threads reading batches ahead of a split that decodes on every read (one too large to
# cache), and how many batches they may hold. A split held in memory is read in the
# training loop's own thread: indexing takes microseconds, and handing batches over from
# reader threads slowed digits training down (measured with bench.paired).
READ_THREADS = 2
PREFETCH_BATCHES = 4


def read_threads(split) -> int:
    """Reader threads for ``split``: 0 when it is held in memory (``split.cached``: an
    ``ImageData``, or a ``StreamedSplit`` within its cache budget), else ``READ_THREADS``."""
    return 0 if split.cached else READ_THREADS


def training_batches(
    split, batch_size: int, seed: int, num_batches: int, *, rows: slice = slice(None)
) -> grain.MapDataset:
    """Element ``step`` (0 <= step < num_batches, one per training step): ``{'image',
    'label' (int32)}``, the rows ``rows`` of global batch ``step`` of ``split``."""
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    num_examples = split.num_examples

    def read(step: int) -> dict:
        indices = batch_indices(num_examples, batch_size, seed, int(step))[rows]
        images, labels = split.read(indices)
        return {"image": images, "label": np.asarray(labels, np.int32)}

    batch_indices(num_examples, batch_size, seed, 0)  # a bad batch size fails here, not later
    return grain.MapDataset.range(num_batches).map(read)


def start_batches(dataset: grain.MapDataset, state: dict | int, *, threads: int = READ_THREADS):
    """An iterator over ``dataset`` at ``state`` (a saved ``iterator.get_state()`` or the
    index of the next element), read ahead by ``threads`` threads (0: read in the calling
    thread when asked)."""
    if isinstance(state, int):
        state = {"next_index": state}
    buffer = PREFETCH_BATCHES if threads else 0
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffer)
    iterator = iter(dataset.to_iter_dataset(options))
    iterator.set_state(dict(state))
    return iterator


def next_index(state: dict) -> int:
    """The element a saved iterator state reads next."""
    return int(state["next_index"])
