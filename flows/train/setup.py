"""Setting a run up: data, mesh, model and state, the compiled train step, checkpoints, resume.

``setup_run(config, workdir)`` returns a ``Run`` holding everything the step loop and the
final evaluation need; it knows a model only through ``flows.models.build_model`` and the
``DensityModel`` interface.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile

import jax
import numpy as np
from flax import nnx

from flows import data as data_lib
from flows import sharding
from flows import workdir as wd
from flows.data import pipeline
from flows.errors import CheckpointError, ConfigError
from flows.likelihood import dequantize
from flows.models import build_model, is_conditional
from flows.models.registry import with_defaults
from flows.train import config_checks, optim
from flows.train.checkpoint import Checkpointer, ShapeMismatch, abstract_like
from flows.train.objectives import density_loss
from flows.train.optim import run_optimizer
from flows.train.state import TrainState, default_use_ema, keeps_ema
from flows.train.step import make_train_step

# The key of a checkpoint's meta holding the training iterator's state.
DATA_STATE = "data_iterator"


@dataclasses.dataclass
class Run:
    """A set-up run. ``meta`` is the loop's own state saved with each checkpoint."""

    config: object
    workdir: str
    is_main: bool
    train_split: data_lib.StreamedSplit
    validation_split: data_lib.StreamedSplit | None
    test_split: data_lib.StreamedSplit
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    state: TrainState
    train_step: object  # jitted (state, batch) -> (state, metrics)
    checkpoints: Checkpointer
    best: Checkpointer
    meta: dict
    start_step: int
    num_params: int
    # This process's training batches from start_step on (a grain iterator; its state goes
    # into every checkpoint's meta as DATA_STATE); None once every step is done.
    batches: object = None
    lock: wd.RunLock | None = None  # the workdir's (the main process's), released by close

    @property
    def use_ema(self) -> bool:
        return default_use_ema(self.config, self.state)

    @property
    def eval_key(self) -> jax.Array:
        return jax.random.key(self.config.eval.seed)

    def model(self, state: TrainState | None = None) -> nnx.Module:
        """The model with ``state``'s (default: the current) evaluation parameters."""
        return (state or self.state).model(self.graphdef, use_ema=self.use_ema)

    def replicated_like_state(self):
        return abstract_like(self.state, sharding.replicated(self.mesh))

    def close(self) -> None:
        try:
            self.checkpoints.close()
            self.best.close()
        finally:
            if self.lock is not None:
                self.lock.release()


def host_batches(data, batch_size: int, seed: int, num_batches: int):
    """The grain dataset of this process's rows of global batches ``0..num_batches-1``."""
    rows = sharding.process_slice(batch_size)
    return pipeline.training_batches(data, batch_size, seed, num_batches, rows=rows)


def make_model_and_state(
    config, image_shape, num_bins, num_classes, tx, init_images, init_labels, mesh, label_counts
):
    """Builds the model, runs data-dependent init on ``init_images`` (a sharded global batch),
    and returns ``(graphdef, TrainState)`` replicated over the mesh."""
    seed = config.train.seed
    model = build_model(config.model, image_shape, num_classes, rngs=nnx.Rngs(seed))
    if label_counts is not None and is_conditional(model):
        model.set_label_prior(label_counts)  # p(y) for the marginal and Bayes' rule
    graphdef, params, buffers = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def initialize(params, buffers, images, labels, key):
        m = nnx.merge(graphdef, params, buffers)
        x = dequantize(key, images, num_bins)
        m.initialize(x, context=labels if is_conditional(m) else None)
        return nnx.split(m, nnx.Param, ...)[1:]

    key = jax.random.key(seed)
    params, buffers = initialize(
        sharding.replicate(params, mesh),
        sharding.replicate(buffers, mesh),
        init_images,
        init_labels,
        jax.random.fold_in(key, -1 % 2**31),
    )
    model = nnx.merge(graphdef, params, buffers)
    state = TrainState.create(model, tx, key, ema=keeps_ema(config))
    return graphdef, sharding.replicate(state, mesh)


def _prepare_workdir(workdir: str, is_main: bool) -> tuple[wd.RunLock | None, dict | None]:
    """Creates ``workdir`` if needed, checks it is writable, takes its lock (the main process:
    ``wd.RunLock``; a workdir another run trains in is refused here) and removes temporary
    files of writes a killed run left; returns the lock and the stored config (today's names)
    of the run already in it, or None."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as e:
        raise CheckpointError(
            f"cannot write to --workdir {workdir} ({e.strerror or type(e).__name__}); "
            "choose a writable directory"
        ) from None
    lock = wd.RunLock(workdir) if is_main else None
    try:
        if not os.path.exists(wd.path(workdir, wd.CONFIG)):
            return lock, None  # no run wrote here: nothing of ours to tidy
        if is_main:
            wd.remove_partial_writes(workdir)
        return lock, wd.load_config(workdir).to_dict()
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _write_run_files(config, workdir, train) -> None:
    wd.write_run_files(
        workdir,
        config,
        image_shape=train.image_shape,
        num_bins=train.num_bins,
        num_classes=train.num_classes,
        train=train.name,
        num_train=train.num_examples,
    )


def _compiled_train_step(graphdef, state, config, tx, num_bins, mesh):
    state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), state)
    return jax.jit(
        make_train_step(graphdef, density_loss(num_bins), tx, config.train.ema_decay),
        in_shardings=(state_sharding, sharding.batch_sharded(mesh)),
        out_shardings=(state_sharding, sharding.replicated(mesh)),
        donate_argnums=0,
    )


def _start_afresh(run: Run, earlier_run: bool, changes: dict) -> None:
    """No checkpoint: this is a new run. What an earlier run in the workdir (one that wrote
    config.json but never a checkpoint) left (best/, samples, records, config history,
    TensorBoard events) must not be mixed into it; a directory no run wrote in keeps its
    files."""
    if changes and run.is_main:
        print(f"{run.workdir} holds no checkpoint: starting afresh with the new config")
    if earlier_run:
        run.best.delete_after(-1)  # through orbax: its manager may be writing in best/
    if run.is_main and earlier_run:
        shutil.rmtree(wd.path(run.workdir, wd.SAMPLES), ignore_errors=True)
        for name in os.listdir(run.workdir):
            if (
                name == wd.CONFIG_HISTORY
                or name.startswith(wd.EVENTS_PREFIX)
                or (name.startswith("eval_") and name.endswith(".json"))
            ):
                os.remove(wd.path(run.workdir, name))
    if run.is_main:
        wd.write_text_atomic(wd.path(run.workdir, wd.METRICS), "")


def _newest_restorable(run: Run, changes: dict):
    """``(step, state, meta, unreadable_steps)`` of the newest checkpoint that restores;
    a checkpoint of another model is an error, an unreadable one is skipped."""
    abstract = run.replicated_like_state()
    unreadable, first_error = [], None
    for step in reversed(run.checkpoints.all_steps()):
        try:
            state, meta = run.checkpoints.restore(abstract, step)
        except ShapeMismatch as e:
            if changes:
                raise ConfigError(
                    f"the config changes the model's shapes ({wd.describe_changes(changes)}), "
                    f"so {run.workdir} cannot resume: rerun with the config in its "
                    "config.json, or use a fresh --workdir"
                ) from None
            raise CheckpointError(f"{e}; use a fresh --workdir") from None
        except CheckpointError as e:
            unreadable.append(step)
            first_error = first_error or e
            continue
        return step, state, meta, unreadable
    raise CheckpointError(
        f"no readable checkpoint in {run.workdir} (the newest: {first_error}); "
        "use a fresh --workdir, or move checkpoints/ away to start this run again"
    )


def _resume(run: Run, stored_config: dict | None, allow_config_change: bool) -> None:
    """Restores the newest readable checkpoint if there is one (moving newer unreadable ones
    to ``corrupt/``) and drops what came after it (metrics records, best-on-validation states
    the resumed run has not produced yet). A config that differs from the stored one is
    refused unless ``allow_config_change``; an allowed change is recorded with its step."""
    changes = {}
    if stored_config is not None:
        # Fields added since the run was written are what it ran with: their defaults.
        stored = {
            **stored_config,
            "model": with_defaults(stored_config.get("model", {})),
            "optim": {**optim.ADDED_DEFAULTS, **stored_config.get("optim", {})},
        }
        changes = wd.config_changes(stored, run.config.to_dict())
    if not run.checkpoints.all_steps():
        _start_afresh(run, stored_config is not None, changes)
        return
    step, state, meta, unreadable = _newest_restorable(run, changes)
    if changes and not allow_config_change:
        raise ConfigError(
            f"the config differs from the run in {run.workdir}: {wd.describe_changes(changes)}; "
            "rerun with --allow_config_change to resume with it anyway (recorded in "
            f"{wd.CONFIG_HISTORY}), or use a fresh --workdir"
        )
    for bad in unreadable:
        if run.is_main:
            moved = run.checkpoints.move_away(bad, wd.path(run.workdir, wd.CORRUPT))
            print(f"checkpoint {bad} is unreadable: moved to {moved}; resuming from step {step}")
    run.state, run.meta, run.start_step = state, meta, step
    run.best.delete_after(step)
    if run.best.latest_step() != meta.get("best_step"):
        if run.is_main:
            print(
                f"{run.best.directory} does not hold step {meta.get('best_step')} that the "
                f"checkpoint recorded as best: model selection starts again at step {step}"
            )
        run.meta.update(best_val_bpd=math.inf, best_step=None)
    if run.is_main:
        wd.truncate_metrics(run.workdir, step)
        if changes:
            wd.append_config_history(run.workdir, step, changes)
        print(f"resumed from {run.checkpoints.step_path(step)}")


def _start_batches(run: Run):
    """The training batches from ``run.start_step`` on, at the data position the resumed
    checkpoint saved (a checkpoint written before the position was saved: its step)."""
    tc = run.config.train
    if run.start_step >= tc.num_train_steps:
        return None
    state = run.meta.get(DATA_STATE, {"next_index": run.start_step})
    if pipeline.next_index(state) != run.start_step:
        raise CheckpointError(
            f"checkpoint {run.start_step} in {run.workdir} saved the data position "
            f"{state} of another step; use a fresh --workdir"
        )
    dataset = host_batches(run.train_split, tc.batch_size, tc.seed, tc.num_train_steps)
    return pipeline.start_batches(dataset, state, threads=pipeline.read_threads(run.train_split))


def _new_run(config, workdir: str, is_main: bool) -> Run:
    """The data, model, state, compiled step and checkpointers of a run, at step 0."""
    datasets = data_lib.load_datasets(config.data, stream=True)
    train = datasets["train"]

    tc = config.train
    mesh = sharding.data_mesh()
    sharding.check_batch_size(tc.batch_size, mesh)
    tx = run_optimizer(config)
    init = host_batches(train, tc.init_batch_size, tc.seed + 1, num_batches=1)[0]
    init = sharding.shard_batch(init, mesh)
    graphdef, state = make_model_and_state(
        config,
        train.image_shape,
        train.num_bins,
        train.num_classes,
        tx,
        init["image"],
        init["label"],
        mesh,
        # p(y) of a conditional model: one pass over the train split's labels.
        label_counts=(
            np.bincount(train.labels, minlength=train.num_classes)
            if config.model.get("conditional")
            else None
        ),
    )
    checkpoints = Checkpointer(wd.path(workdir, wd.CHECKPOINTS), max_to_keep=2)
    best = Checkpointer(wd.path(workdir, wd.BEST), max_to_keep=1)
    return Run(
        config=config,
        workdir=workdir,
        is_main=is_main,
        train_split=train,
        validation_split=datasets["validation"],
        test_split=datasets["test"],
        mesh=mesh,
        graphdef=graphdef,
        state=state,
        train_step=_compiled_train_step(graphdef, state, config, tx, train.num_bins, mesh),
        checkpoints=checkpoints,
        best=best,
        meta={"best_val_bpd": math.inf, "best_step": None, "wall_time_s": 0.0},
        start_step=0,
        num_params=int(sum(x.size for x in jax.tree.leaves(state.params))),
    )


def setup_run(config, workdir: str, *, allow_config_change: bool = False) -> Run:
    """Everything a run needs, resumed from ``workdir``'s newest readable checkpoint if it has
    one. A config other than the stored one is refused unless ``allow_config_change``; a
    numeric field out of range, before the workdir is touched (``config_checks``). A
    workdir this call created is removed again when the setup fails (a dataset that cannot
    be read, a model the config cannot build): a failed first command leaves nothing."""
    config_checks.check_config(config)
    sharding.initialize_distributed(config.train.distributed)
    is_main = jax.process_index() == 0
    created = is_main and not os.path.lexists(workdir)
    lock, stored_config = _prepare_workdir(workdir, is_main)

    def undo():  # removed while the lock is held: no other run can have started in it
        if created:
            shutil.rmtree(workdir, ignore_errors=True)
        if lock is not None:
            lock.release()

    try:
        run = _new_run(config, workdir, is_main)
    except BaseException:
        undo()
        raise
    try:
        _resume(run, stored_config, allow_config_change)
        run.batches = _start_batches(run)
        if is_main:
            _write_run_files(config, workdir, run.train_split)
    except BaseException:
        try:
            run.close()  # no orbax threads left to fail at interpreter exit
        finally:
            undo()
        raise
    run.lock = lock
    return run
