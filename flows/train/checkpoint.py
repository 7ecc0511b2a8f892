"""Checkpoints with orbax: the whole ``TrainState`` (params, optimizer state, EMA, step, RNG)
plus a JSON record of the loop's own state (best validation so far, and the training input
iterator's state: the data position, ``flows.data.pipeline``).

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run
killed mid-save (even by SIGKILL) leaves the previous checkpoint intact; the temporary
directory is removed when the manager next opens. A checkpoint damaged afterwards is reported
by ``restore`` as unreadable (``flows.train.setup`` then falls back to an earlier one), and a
checkpoint of another model (its arrays have other shapes) as ``ShapeMismatch``, before orbax
is asked to read it.
"""

from __future__ import annotations

import contextlib
import logging
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from flows.errors import CheckpointError


class ShapeMismatch(CheckpointError):
    """The checkpoint holds arrays of other shapes (or another tree) than the restore target."""


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class Checkpointer:
    """Saves and restores ``(TrainState, meta)`` under ``directory`` (keeps ``max_to_keep``)."""

    def __init__(self, directory: str, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._max_to_keep = max_to_keep
        self._open()

    def _open(self) -> None:
        with _quiet_absl():  # orbax logs damaged metadata itself; restore() reports it
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=self._max_to_keep, create=True, cleanup_tmp_directories=True
                ),
            )

    def reload(self) -> None:
        """Re-reads the directory (after it was changed from outside the manager)."""
        self._manager.close()
        self._open()

    def latest_step(self) -> int | None:
        with _quiet_absl():
            return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        with _quiet_absl():
            return sorted(self._manager.all_steps())

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def delete_after(self, step: int) -> None:
        """Deletes every checkpoint of a later step than ``step``."""
        with _quiet_absl():
            later = [s for s in self._manager.all_steps() if s > step]
            for s in later:
                self._manager.delete(s)
        if later:
            self.reload()

    def move_away(self, step: int, destination: str) -> str:
        """Moves checkpoint ``step`` out of the managed directory (to
        ``destination/<dirname>-<step>``); returns where it went."""
        os.makedirs(destination, exist_ok=True)
        target = os.path.join(destination, f"{os.path.basename(self.directory)}-{step}")
        suffix = 0
        while os.path.exists(target + (f".{suffix}" if suffix else "")):
            suffix += 1
        target += f".{suffix}" if suffix else ""
        os.replace(self.step_path(step), target)
        self.reload()
        return target

    def save(self, step: int, state, meta: dict) -> None:
        saved = self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        if not saved:  # orbax refuses e.g. a step not after its latest one
            latest = self.latest_step()
            raise CheckpointError(
                f"could not save step {step} to {self.directory} (it holds step {latest}); "
                "move the directory away or use a fresh --workdir"
            )

    def restore(self, abstract_state, step: int | None = None):
        """``(state, meta)`` of ``step`` (default: latest), shaped and sharded like
        ``abstract_state`` (a pytree of ``jax.ShapeDtypeStruct``)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        mismatch = self.shape_mismatch(step, abstract_state)
        if mismatch:
            raise ShapeMismatch(
                f"checkpoint {self.step_path(step)} holds another model than the config builds "
                f"({mismatch})"
            )
        try:
            with _quiet_absl():  # orbax logs its own multi-line error before raising
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
        except Exception as e:  # orbax raises many types for damaged files
            raise self._unreadable(step, e) from None
        # Copy into buffers XLA allocates itself: restored host buffers may be aligned
        # differently, and XLA:CPU's vectorised reductions can round differently on them,
        # which would break bitwise-exact resumption.
        state = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))(restored.state)
        return state, dict(restored.meta)

    def shape_mismatch(self, step: int, abstract_state) -> str | None:
        """The first array whose shape differs between checkpoint ``step`` and
        ``abstract_state`` (``'path: saved (a, b) vs (c, d)'``), or None when all agree.
        Reads only the checkpoint's metadata; raises CheckpointError when that is unreadable."""
        try:
            with _quiet_absl():
                meta = ocp.StandardCheckpointer().metadata(
                    os.path.join(self.step_path(step), "state")
                )
            saved = _shapes(meta.item_metadata)
            if not saved:
                raise ValueError("its metadata lists no arrays")
        except Exception as e:
            raise self._unreadable(step, e) from None
        wanted = _shapes(abstract_state)
        for name in sorted(saved.keys() | wanted.keys()):
            a, b = saved.get(name, "absent"), wanted.get(name, "absent")
            if a != b:
                return f"{name}: saved {a} vs {b}"
        return None

    def _unreadable(self, step: int, error: Exception) -> CheckpointError:
        """One line naming checkpoint ``step`` and what reading it raised."""
        cause = " ".join(str(error).split())[:200] or type(error).__name__
        return CheckpointError(
            f"checkpoint {self.step_path(step)} is unreadable ({type(error).__name__}: {cause})"
        )

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _shapes(tree) -> dict[str, tuple]:
    """``{'params/levels/0/.../w1/value': shape}`` of a state pytree or of orbax metadata."""

    def name(path):
        parts = []
        for k in path:
            for attr in ("key", "name", "idx"):
                if hasattr(k, attr):
                    parts.append(str(getattr(k, attr)))
                    break
        return "/".join(parts)

    return {
        name(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if hasattr(leaf, "shape")
    }


def abstract_like(tree, sharding=None):
    """Shape/dtype (and sharding) skeleton of a pytree, the restore target for orbax."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or x.sharding), tree
    )
