"""Data parallelism with JAX sharding: one mesh axis ``'data'`` over every device of every
process; the batch is split along it, the training state replicated. Statistics computed
under jit on a sharded batch (ActNorm's data-dependent init, the loss) are over the *global*
batch. Multi-host: ``initialize_distributed`` calls ``jax.distributed.initialize`` and each
process feeds its own slice of the global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flows.errors import ConfigError


def initialize_distributed(config) -> None:
    """``jax.distributed.initialize`` from ``config.train.distributed`` (a no-op when off).

    Fields: ``enabled``, ``coordinator_address`` ('' = auto-detect on TPU / SLURM / ...),
    ``num_processes`` (0 = auto), ``process_id`` (-1 = auto). Once per process: a second run
    in the same process (a resume, a sweep) keeps the connection (JAX allows one
    ``initialize``, before the backend starts).
    """
    if not config.enabled or jax.distributed.is_initialized():
        return
    kwargs = {}
    if config.coordinator_address:
        kwargs["coordinator_address"] = config.coordinator_address
    if config.num_processes > 0:
        kwargs["num_processes"] = config.num_processes
    if config.process_id >= 0:
        kwargs["process_id"] = config.process_id
    jax.distributed.initialize(**kwargs)


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'data' over ``devices`` (default: every device of every process)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(
            f"batch size {batch_size} is not divisible by the {n} devices; use a multiple of {n}"
        )


def process_slice(global_batch_size: int) -> slice:
    """The rows of a global batch that this process loads."""
    per_process = global_batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy rows -> global arrays sharded over the 'data' axis."""
    sharding = batch_sharded(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))
