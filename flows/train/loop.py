"""The training loop: ``train_and_evaluate(config, workdir)`` = setup, steps, finish.

* ``flows.train.setup.setup_run``: data, model, state, compiled step, resume.
* ``run_steps``: the jit-compiled steps, with the periodic actions of
  ``flows.train.periodic`` (log, validate, sample, checkpoint), each on its own schedule.
* ``finish``: model selection on validation, one evaluation on test, the final sample grid
  and the learning curves.

Every record written to ``metrics.jsonl`` also goes to the run's TensorBoard event file
(``flows.train.tensorboard``, main process, ``train.tensorboard``), with the sample grids and
the test bits/dim.

What the run prints (main process): a warning when the warmup is as long as the run
(``schedule_warning``), a progress bar (``train.progress``) whose rate and ETA start after
the first step's compilation, and, from ``experiments.train``, ``outputs_line`` last.

The test split never picks anything: with a validation split, the best-on-validation state
is evaluated on test; without one, the final state is. The files a run writes are listed in
``flows.workdir``.
"""

from __future__ import annotations

import glob
import os
import time

import jax
from tqdm import tqdm

from flows import plotting, sharding
from flows import workdir as wd
from flows.evaluation import evaluate_per_example, write_per_example
from flows.provenance import provenance
from flows.train import optim, periodic, tensorboard
from flows.train.setup import Run, setup_run


def train_and_evaluate(config, workdir: str, *, allow_config_change: bool = False) -> dict:
    """Trains (resuming if ``workdir`` has a checkpoint), then evaluates on test.

    A ``config`` other than the one stored in ``workdir`` is refused (``ConfigError`` naming
    each changed key) unless ``allow_config_change``, which records the change and its step in
    the workdir's config history. Returns the test evaluation record (also written to
    ``eval_test.json``).
    """
    t_start = time.time()
    run = setup_run(config, workdir, allow_config_change=allow_config_change)
    board = None
    try:
        board = tensorboard.open_board(run)
        run_steps(run, board)
        return finish(run, t_start, board)
    finally:
        try:
            if board is not None:
                board.close()
        finally:
            run.close()


def make_actions(
    run: Run, wall_time, board: tensorboard.Board | None = None
) -> list[periodic.PeriodicAction]:
    """The actions that add to a step's metrics record, in the order they run."""
    tc = run.config.train
    # The schedule of the optimizer setup_run built (make_optimizer, same arguments).
    schedule = optim.learning_rate_schedule(run.config.optim, tc.num_train_steps)
    return [
        periodic.LogTrainMetrics(tc.log_every, wall_time, schedule),
        periodic.Validate(tc.eval_every, wall_time),
        periodic.SampleGrid(tc.sample_every, board),
    ]


def schedule_warning(config) -> str | None:
    """One line when the warmup is as long as the run or longer (the learning rate of the
    last update, ``learning_rate_schedule(n = num_train_steps - 1)``, is then below
    ``optim.lr``); None otherwise."""
    warmup, total = int(config.optim.warmup_steps), int(config.train.num_train_steps)
    if warmup <= 0 or warmup < total:
        return None
    last = float(optim.learning_rate_schedule(config.optim, total)(total - 1))
    return (
        f"warning: optim.warmup_steps={warmup} >= train.num_train_steps={total}: the learning "
        f"rate never reaches optim.lr={config.optim.lr:g} (the last step's is {last:.3g})"
    )


def run_steps(run: Run, board: tensorboard.Board | None = None) -> None:
    """Steps ``run.start_step .. num_train_steps - 1``, with the periodic actions after each;
    each step's record goes to metrics.jsonl, then to ``board``."""
    tc = run.config.train
    session_start, wall_before = time.time(), run.meta["wall_time_s"]
    wall_time = lambda: wall_before + time.time() - session_start
    actions = make_actions(run, wall_time, board)
    # The checkpoint comes after the step's metrics record is written: a checkpoint never
    # exists without the records up to its step (records after it are dropped on resume).
    save_checkpoint = periodic.SaveCheckpoint(tc.checkpoint_every, wall_time)
    if run.is_main:  # process 0 writes the run's files
        os.makedirs(wd.path(run.workdir, wd.SAMPLES), exist_ok=True)
    warning = schedule_warning(run.config)
    if warning and run.is_main:
        print(warning, flush=True)
    bar = tqdm(
        total=tc.num_train_steps,
        initial=run.start_step,
        desc="train",
        unit="step",
        disable=not (run.is_main and tc.progress),
        mininterval=1.0,
        postfix="compiling the first step",
    )
    last_val = None
    for step in range(run.start_step, tc.num_train_steps):
        batch = sharding.shard_batch(next(run.batches), run.mesh)
        run.state, metrics = run.train_step(run.state, batch)
        if step == run.start_step:  # the bar's clock starts now, after the compilation
            bar.set_postfix_str("", refresh=False)
            bar.unpause()
        bar.update(1)
        done, is_last = step + 1, step + 1 == tc.num_train_steps
        record = {"step": done}
        for action in actions:
            action.observe(metrics)
            if action.due(done, is_last):
                action(run, done, record)
        if len(record) > 1:
            last_val = record.get("val_bpd", last_val)
            postfix = {"bpd": f"{record['train_bpd']:.3f}"} if "train_bpd" in record else {}
            if last_val is not None:
                postfix["val"] = f"{last_val:.3f}"
            bar.set_postfix(postfix)
            if run.is_main:
                wd.append_metrics(run.workdir, record)
            if board is not None:
                board.record(record)  # flushed: on disk before the checkpoint below
        if save_checkpoint.due(done, is_last):
            save_checkpoint(run, done, record)
    bar.close()
    run.checkpoints.wait()
    run.best.wait()


def finish(run: Run, t_start: float, board: tensorboard.Board | None = None) -> dict:
    """Selects the parameters, evaluates them on test, writes the record and pictures (and
    the test bits/dim and final grid to ``board``, at the last step)."""
    selected, source = run.state, run.checkpoints
    if run.validation_split is not None and run.best.latest_step() is not None:
        selected, _ = run.best.restore(run.replicated_like_state())
        source = run.best
    model = run.model(selected)
    config = run.config
    record, per_example = evaluate_per_example(
        model,
        run.test_split,
        batch_size=config.eval.batch_size,
        key=jax.random.fold_in(run.eval_key, 1),
        num_samples=config.eval.num_samples,
    )
    record.update(
        dataset=config.data.name,
        n_bits=config.data.n_bits,
        parameters="ema" if run.use_ema else "raw",
        checkpoint_step=int(selected.step),
        checkpoint=source.step_path(int(selected.step)),
        selected_by="best validation bits/dim"
        if run.validation_split is not None
        else "final step",
        num_params=run.num_params,
        train_steps=int(run.state.step),
        wall_time_s=float(run.meta["wall_time_s"]),
        total_time_s=time.time() - t_start,
        config_changed_at=wd.config_changed_at(run.workdir),
        provenance=provenance(),
    )
    if run.is_main:
        wd.write_json(wd.path(run.workdir, wd.EVAL_TEST), record)
        write_per_example(wd.path(run.workdir, wd.per_example_file(wd.EVAL_TEST)), per_example)
        picture = periodic.save_sample_grid(
            wd.path(run.workdir, "samples.png"),
            run,
            model,
            jax.random.fold_in(run.eval_key, 2),
            f"samples of the selected parameters ({record['parameters']}, step "
            f"{record['checkpoint_step']})",
        )
        if board is not None:
            board.test(record["train_steps"], record)
            board.samples(tensorboard.FINAL_SAMPLES, record["train_steps"], picture)
        plotting.plot_learning_curves(
            wd.path(run.workdir, "learning_curves.png"),
            {os.path.basename(os.path.normpath(run.workdir)): wd.read_metrics(run.workdir)},
            title=f"{config.data.name}: bits/dim",
        )
    return record


def _duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 5 s"``, ``"2 h 7 min"``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _steps_in(directory: str) -> list[int]:
    """The steps of the checkpoints in ``directory`` (its numeric subfolders)."""
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(n) for n in names if n.isdigit())


def outputs_line(workdir: str, record: dict, session_s: float) -> str:
    """The last line of a training run: what it wrote into ``workdir`` (the sample grids, the
    learning curves, the evaluation record, the checkpoints) and how long it took
    (``session_s``, this session; ``record["wall_time_s"]``, the steps of every session)."""
    periodic_grids = len(glob.glob(wd.path(workdir, f"{wd.SAMPLES}/step_*.png")))
    written = ["samples.png (final sample grid)"]
    if periodic_grids:
        written.append(f"{wd.SAMPLES}/ ({periodic_grids} grids during training)")
    written.append("learning_curves.png")
    per_example = wd.per_example_file(wd.EVAL_TEST)
    if os.path.exists(wd.path(workdir, per_example)):
        written.append(f"{wd.EVAL_TEST} and {per_example} (test record, per example values)")
    else:
        written.append(f"{wd.EVAL_TEST} (test record)")
    written.append(wd.METRICS)
    for directory in (wd.CHECKPOINTS, wd.BEST):
        steps = _steps_in(wd.path(workdir, directory))
        if steps:
            word = "step" if len(steps) == 1 else "steps"
            written.append(f"{directory}/ ({word} {', '.join(map(str, steps))})")
    if glob.glob(wd.path(workdir, f"{wd.EVENTS_PREFIX}*")):
        written.append("TensorBoard events")
    return (
        f"wrote {workdir}: {', '.join(written)}; wall time {_duration(session_s)} "
        f"({_duration(record['wall_time_s'])} of training steps)"
    )
