"""Data parallelism with JAX sharding, for training (``flows.train``) and evaluation
(``flows.evaluation``): one mesh axis ``'data'`` (``AXIS``) over every device of every process;
a batch is split along it, the model's state replicated. Statistics computed under jit on a
sharded batch (ActNorm's data-dependent init, the loss) are over the *global* batch.

Multi-host: ``initialize_distributed`` calls ``jax.distributed.initialize``; each process
holds equal, consecutive device blocks of the mesh (as in ``jax.devices()``) and feeds its
own rows of every global batch (``process_slice``, ``shard_rows``).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flows.errors import ConfigError

AXIS = "data"  # the mesh's one axis: the batch is split along it
BATCH = PartitionSpec(AXIS)  # leading axis split over the devices
REPLICATED = PartitionSpec()  # a whole copy on every device


def initialize_distributed(config) -> None:
    """``jax.distributed.initialize`` from ``config``, a run's ``config.train.distributed``
    (a no-op when off).

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
    """A 1-D mesh named ``AXIS`` over ``devices`` (default: every device of every process)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of a value held whole on every device of ``mesh``."""
    return NamedSharding(mesh, REPLICATED)


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of a batch split along its leading axis over ``mesh``'s devices."""
    return NamedSharding(mesh, BATCH)


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """A one-line ``ConfigError`` unless ``batch_size`` splits evenly over the devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(
            f"batch size {batch_size} is not divisible by the {n} devices; use a multiple of {n}"
        )


def process_slice(global_batch_size: int) -> slice:
    """The rows of a global batch that this process loads (its devices' rows)."""
    per_process = global_batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def shard_rows(rows, mesh: Mesh) -> jax.Array:
    """This process's rows (``process_slice``) of a global batch -> the global array,
    sharded over ``mesh``'s ``AXIS``."""
    return jax.make_array_from_process_local_data(batch_sharded(mesh), np.asarray(rows))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """``shard_rows`` of every entry of a dict of host-local numpy rows."""
    return {k: shard_rows(v, mesh) for k, v in batch.items()}


def replicate(tree, mesh: Mesh):
    """``tree`` on every device of ``mesh``; a leaf already replicated there is kept as it is.
    With several processes ``device_put`` cannot reach a committed array to the other
    processes' devices: each process hands over its own (identical) copy."""
    target = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(target, x.ndim):
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, target)
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = jax.make_array_from_process_local_data(
                target, np.asarray(jax.random.key_data(x))
            )
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(target, np.asarray(x))

    return jax.tree.map(put, tree)
