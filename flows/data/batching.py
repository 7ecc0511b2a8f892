"""Stateless, deterministic batching: the batch at global step ``step`` depends only on
``(num_examples, batch_size, seed, step)``, so resuming a run needs nothing but ``step``.

Epochs drop the remainder: an epoch has ``num_examples // batch_size`` batches and each epoch
visits ``steps_per_epoch * batch_size`` distinct examples once, in a fresh permutation.
Permutations use NumPy's legacy ``RandomState`` (a stream NumPy keeps frozen across versions),
seeded with ``SeedSequence([seed, epoch])``, so they are the same on every machine and version.
"""

import functools

import numpy as np

from flows.errors import ConfigError


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Number of full batches per epoch (the remainder is dropped)."""
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if num_examples < batch_size:
        raise ConfigError(f"batch_size {batch_size} is larger than the dataset ({num_examples})")
    return num_examples // batch_size


@functools.lru_cache(maxsize=4)
def _cached_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    state = np.random.SeedSequence([seed, epoch]).generate_state(1)[0]
    perm = np.random.RandomState(state).permutation(num_examples)
    perm.flags.writeable = False
    return perm


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``range(num_examples)`` (read-only, int64)."""
    if num_examples <= 0:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    return _cached_permutation(int(num_examples), int(seed), int(epoch))


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Example indices of global batch ``step`` (0-based); shape ``(batch_size,)``, int64.

    Step ``s`` is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``.
    """
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    per_epoch = steps_per_epoch(num_examples, batch_size)
    epoch, index = divmod(int(step), per_epoch)
    perm = epoch_permutation(num_examples, seed, epoch)
    return perm[index * batch_size : (index + 1) * batch_size].copy()
