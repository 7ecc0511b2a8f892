"""TensorBoard event files in the workdir, next to ``metrics.jsonl`` (``train.tensorboard``).

``tensorboard --logdir runs`` shows every workdir under ``runs/`` as one run. What a run
writes, each at the step it belongs to:

* every numeric field of each ``metrics.jsonl`` record, as the scalar ``SCALAR_TAGS[field]``
  (a model's own ``train_<name>`` as ``train/<name>``, any other field under its own name);
* ``test/<field>`` for the final evaluation (``TEST_FIELDS``), at the last step;
* the sample grids as images: ``samples/periodic`` (``train.sample_every``, the parameters
  of that step) and ``samples/final`` (the selected parameters, at the last step).

Written synchronously by the training process (main process only) with tensorboardX's
summary protocol buffers and its record writer (TFRecord framing with CRCs); no TensorFlow.
tensorboardX's ``SummaryWriter`` hands events to a thread and its ``flush()`` does not wait
for that thread's queue; here each metrics record's events are flushed (and fsynced) right
after the record is appended to ``metrics.jsonl``, so, as for the metrics, the events of
every step up to a checkpoint are on disk before the checkpoint is saved.

Sessions. Each session (the first run, each resume) writes its own event file and starts it
with the restart marker ``SummaryWriter(purge_step=p)`` writes (``SessionLog.START`` at step
``p``): TensorBoard's reader (``event_accumulator``) drops the events of earlier sessions at
steps ``>= p``, so a step a killed session logged after its last checkpoint and the resumed
session logs again is shown once (TensorBoard's default data server, ``--load_fast``, showed
each step once too). ``p`` is the first step the session writes: ``start_step + 1``; a
session with no steps left (a rerun after the last checkpoint) writes the final evaluation
at ``start_step`` again, so its marker is at ``start_step`` and it first rewrites that
step's record from ``metrics.jsonl`` (a periodic sample grid of that step is not rewritten).

A SIGKILL. Event files are appended to; a kill inside a write can leave a truncated last
record, which TensorBoard's reader skips (it stops reading that file there; the next
session's file is read after it). Every complete record before it is kept.
"""

from __future__ import annotations

import itertools
import os
import socket
import time

import numpy as np
from tensorboardX import RecordWriter, summary
from tensorboardX.proto.event_pb2 import Event, SessionLog

from flows import workdir as wd

# What each field of a metrics.jsonl record is called in TensorBoard (the slash groups them).
SCALAR_TAGS = {
    "train_bpd": "train/bits_per_dim",
    "train_loss": "train/loss",
    "val_bpd": "validation/bits_per_dim",
    "lr": "optim/learning_rate",
    "grad_norm": "optim/grad_norm",
    "nonfinite_steps": "optim/skipped_steps",
    "consecutive_nonfinite": "optim/consecutive_skipped_steps",
    "images_per_s": "speed/images_per_s",
    "wall_time_s": "speed/wall_time_s",
}
# Fields of the final evaluation record written as test/<field> (those the record has).
TEST_FIELDS = ("bits_per_dim", "marginal_bits_per_dim", "accuracy", "label_nll_nats")
PERIODIC_SAMPLES, FINAL_SAMPLES = "samples/periodic", "samples/final"


def scalar_tag(field: str) -> str:
    """The TensorBoard tag of a metrics.jsonl field."""
    if field in SCALAR_TAGS:
        return SCALAR_TAGS[field]
    if field.startswith("train_"):
        return "train/" + field[len("train_") :]
    return field


def _numeric(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def scalars_of(record: dict) -> dict[str, float]:
    """``{tag: value}`` of every numeric field of a metrics record but ``step``."""
    return {scalar_tag(k): float(v) for k, v in record.items() if k != "step" and _numeric(v)}


class Board:
    """One session's event file in ``workdir``, starting with the restart marker at
    ``first_step`` (the first step the session writes)."""

    def __init__(self, workdir: str, first_step: int):
        name = f"{wd.EVENTS_PREFIX}{int(time.time()):010d}.{socket.gethostname()}"
        self.path = base = os.path.join(workdir, f"{name}.{os.getpid()}")
        for n in itertools.count(1):  # the writer truncates: never reuse a name (same second)
            if not os.path.exists(self.path):
                break
            self.path = f"{base}.{n}"
        self._writer = RecordWriter(self.path)
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        start = SessionLog(status=SessionLog.START)
        self._write(Event(wall_time=time.time(), step=int(first_step), session_log=start))
        self.flush()

    def _write(self, event: Event) -> None:
        self._writer.write(event.SerializeToString())

    def _summary(self, step: int, value) -> None:
        self._write(Event(wall_time=time.time(), step=int(step), summary=value))

    def record(self, record: dict) -> None:
        """The scalars of a metrics.jsonl record at its step, flushed to disk."""
        for tag, value in scalars_of(record).items():
            self._summary(record["step"], summary.scalar(tag, value))
        self.flush()

    def test(self, step: int, evaluation: dict) -> None:
        """``test/<field>`` of the final evaluation record."""
        for field in TEST_FIELDS:
            if _numeric(evaluation.get(field)):
                self._summary(step, summary.scalar(f"test/{field}", evaluation[field]))

    def samples(self, tag: str, step: int, picture: np.ndarray) -> None:
        """A sample grid: the picture of its PNG (``flows.plotting.grid_picture``, uint8,
        (H, W) or (H, W, 3))."""
        picture = picture[..., None] if picture.ndim == 2 else picture
        self._summary(step, summary.image(tag, picture, dataformats="HWC"))

    def flush(self) -> None:
        self._writer.flush()  # Python's buffer to the file, then fsync

    def close(self) -> None:
        self.flush()
        self._writer.close()


def open_board(run) -> Board | None:
    """The session's ``Board`` (None unless ``train.tensorboard``, or off the main process).

    A session that resumed at ``s`` writes from step ``s + 1``; with no steps left it writes
    the final evaluation at ``s``, so it restarts at ``s`` and first rewrites the record of
    ``s`` from metrics.jsonl."""
    if not (run.is_main and run.config.train.tensorboard):
        return None
    s = run.start_step
    if s < run.config.train.num_train_steps:
        return Board(run.workdir, s + 1)
    board = Board(run.workdir, s)
    for record in wd.read_metrics(run.workdir):
        if record["step"] == s:
            board.record(record)
    return board
