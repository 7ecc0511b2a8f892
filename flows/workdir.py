"""The files of a training workdir, how they are written, and how old ones are read.

What a workdir holds after ``flows.train.train_and_evaluate``::

    config.json             the resolved config
    data_info.json          image shape, num_bins, num_classes, train split and size
    metrics.jsonl           one record per step that logged or validated
    checkpoints/<step>/     the latest TrainStates (orbax); a rerun of the same command resumes
    best/<step>/            the state with the best validation bits/dim (model selection)
    samples/step_<n>.png    sample grids during training; samples.png at the end
    learning_curves.png     train / validation bits/dim against step
    eval_test.json          test bits/dim of the selected parameters, with provenance
    eval_test.npz           its per-example values (``per_example_file``): index, bits/dim
    config_history.jsonl    config changes accepted on resume (``--allow_config_change``)
    corrupt/                unreadable checkpoints moved out of the way on resume
    events.out.tfevents.*   TensorBoard event files, one per session (flows.train.tensorboard)
    run.lock                who trains here now (``RunLock``): one training process at a time
    converted_from.json     a converted reference checkpoint: its file, sha256 and source
                            (``flows.convert.workdir``; then checkpoints/0/ holds its weights)

The workdir is a contract: ``config.json`` is the config of every step the run made. A rerun
with another config is refused (``config_changes`` names each changed key) unless the change
is allowed explicitly; an allowed change is appended, with the step it took effect at, to
``config_history.jsonl`` and shown in evaluation records and ``experiments.compare``.

Every file is written atomically (a temporary file in the same directory, then a rename), so
a run killed at any instant leaves either the old or the new file, never half of one; the only
file appended to, ``metrics.jsonl``, is read without a partial last line and rewritten
atomically on resume.

One run at a time: the training process (process 0 of a multi-process run) holds an
exclusive ``flock`` on ``run.lock`` from before it touches anything until it ends, and a
second training started on the same workdir meanwhile (a second terminal, a scheduler's
retry) is refused with a one-line error naming the holder, instead of resuming from the
first's checkpoints and interleaving its records with the first's. The kernel drops the
lock when its process ends in any way, SIGKILL included, so rerunning a killed run resumes at
once. (``flock`` is advisory and, on some network filesystems, local to one host.)

Workdirs written before the names were made unambiguous are read through ``upgrade_*``: the
data's quantisation was ``num_levels`` (now ``num_bins``) and the training length
``train.num_steps`` (now ``train.num_train_steps``); Glow's ``model.num_levels`` /
``model.num_steps`` (L and K) kept their names.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no lock
    fcntl = None

import ml_collections

from flows.errors import CheckpointError

CONFIG = "config.json"
DATA_INFO = "data_info.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
BEST = "best"
SAMPLES = "samples"
EVAL_TEST = "eval_test.json"
CONFIG_HISTORY = "config_history.jsonl"
CORRUPT = "corrupt"
LATENTS = "latents"  # experiments.latents' pictures and record
# Where a written (not trained) run's parameters came from (flows.convert.workdir):
CONVERTED = "converted_from.json"  # a reference's checkpoint (experiments.convert)
EXPORTED = "exported_from.json"  # one of our runs (experiments.export)
LOCK = "run.lock"  # held by the process training in the workdir (RunLock)
EVENTS_PREFIX = "events.out.tfevents."  # TensorBoard event files (flows.train.tensorboard)


def path(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)


def per_example_file(record_file: str) -> str:
    """The per-example values beside an evaluation record (a name or a path):
    ``eval_test.json`` -> ``eval_test.npz`` (``flows.evaluation.write_per_example``)."""
    return os.path.splitext(record_file)[0] + ".npz"


@contextlib.contextmanager
def atomic_file(file: str):
    """Yields a temporary path next to ``file``; when the block ends without an error, the
    temporary file is synced and renamed onto ``file`` (else removed)."""
    directory = os.path.dirname(os.path.abspath(file))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(file)}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make every workdir file private
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class RunLock:
    """An exclusive ``flock`` on ``<workdir>/run.lock``, taken at construction (or a one-line
    ``CheckpointError`` naming the process that holds it) and held until ``release`` or the
    end of the process. The file says who holds it: ``pid <pid> on <host> since <time>``."""

    def __init__(self, workdir: str):
        self.path = path(workdir, LOCK)
        self._fd = None
        if fcntl is None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another process (BlockingIOError)
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise CheckpointError(
                f"--workdir {workdir} is in use by another training run ({holder}); wait for it "
                "to end or stop it, or choose another --workdir"
            ) from None
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drops the lock (closing the file drops it); a second call does nothing."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def remove_partial_writes(workdir: str) -> None:
    """Deletes the temporary files of ``atomic_file`` writes that a killed run left behind."""
    for directory in (workdir, path(workdir, SAMPLES), path(workdir, LATENTS)):
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                if name.startswith(".") and name.endswith(".tmp"):
                    os.remove(os.path.join(directory, name))


def write_text_atomic(file: str, text: str) -> None:
    """Writes ``text`` to ``file`` through a temporary file and a rename."""
    with atomic_file(file) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(file: str, obj) -> None:
    write_text_atomic(file, json.dumps(obj, indent=2) + "\n")


def write_run_files(
    workdir: str, config, *, image_shape, num_bins: int, num_classes: int, train, num_train: int
) -> None:
    """``config.json`` (the resolved ConfigDict) and ``data_info.json`` (the data's image
    shape, levels and classes, the name and size of the split the parameters were trained on)."""
    write_text_atomic(path(workdir, CONFIG), config.to_json(indent=2) + "\n")
    info = {
        "image_shape": list(image_shape),
        "num_bins": num_bins,
        "num_classes": num_classes,
        "train": train,
        "num_train": num_train,
    }
    write_json(path(workdir, DATA_INFO), info)


def write_jsonl(file: str, records: list[dict]) -> None:
    """One JSON record per line, the whole file written atomically."""
    write_text_atomic(file, "".join(json.dumps(r) + "\n" for r in records))


def read_json(file: str):
    with open(file) as f:
        return json.load(f)


# -- metrics.jsonl ------------------------------------------------------------------------


def read_jsonl(file: str, *, appended: bool = False) -> list[dict]:
    """The records of a JSONL file ([] when there is none); a damaged line is an error
    naming the file and line, except, in a file ``appended`` to, a partial last line (a
    process killed mid-write), which is dropped."""
    if not os.path.exists(file):
        return []
    with open(file) as f:
        lines = f.read().split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if appended and i == len(lines) - 1:  # no newline after it: the write was cut off
                break
            raise CheckpointError(f"{file}: line {i + 1} is not valid JSON") from None
    return records


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``metrics.jsonl`` (appended to: a partial last line is dropped)."""
    return read_jsonl(path(workdir, METRICS), appended=True)


def append_metrics(workdir: str, record: dict) -> None:
    with open(path(workdir, METRICS), "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(workdir: str, last_step: int) -> None:
    """On resume: keep only the records up to the step resumed from (atomically)."""
    kept = [r for r in read_metrics(workdir) if r["step"] <= last_step]
    write_jsonl(path(workdir, METRICS), kept)


# -- the config contract ------------------------------------------------------------------


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and tuples are values)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


_ABSENT = "(absent)"
# Keys that change how a run is shown, never what it computes: free to differ on resume, and
# free to be absent from a stored config written before they existed (train.tensorboard: a
# resumed run writes event files from the step it resumed at).
PRESENTATION_KEYS = frozenset({"train.progress", "train.tensorboard"})


def config_changes(old: dict, new: dict) -> dict[str, tuple]:
    """``{dotted key: (old value, new value)}`` for every key whose value differs (a key on
    one side only has the value ``'(absent)'`` on the other), in sorted key order;
    ``PRESENTATION_KEYS`` are not compared."""
    a, b = flatten(json.loads(json.dumps(old))), flatten(json.loads(json.dumps(new)))
    return {
        k: (a.get(k, _ABSENT), b.get(k, _ABSENT))
        for k in sorted((a.keys() | b.keys()) - PRESENTATION_KEYS)
        if a.get(k, _ABSENT) != b.get(k, _ABSENT)
    }


def describe_changes(changes: dict[str, tuple]) -> str:
    """``"optim.lr 0.001 -> 0.5, train.num_train_steps 20 -> 40"``."""
    return ", ".join(f"{k} {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in changes.items())


def read_config_history(workdir: str) -> list[dict]:
    """The config changes accepted on resume: ``[{"step": s, "changes": {key: [old, new]}}]``."""
    return read_jsonl(path(workdir, CONFIG_HISTORY))  # written whole: no partial line


def append_config_history(workdir: str, step: int, changes: dict[str, tuple]) -> None:
    """Records that the config ``changes`` took effect at ``step`` (atomically)."""
    history = read_config_history(workdir)
    history.append({"step": int(step), "changes": {k: list(v) for k, v in changes.items()}})
    write_jsonl(path(workdir, CONFIG_HISTORY), history)


def config_changed_at(workdir: str) -> list[dict]:
    """For evaluation records: ``[{"step": s, "keys": [...]}]`` of every accepted change."""
    return [{"step": h["step"], "keys": sorted(h["changes"])} for h in read_config_history(workdir)]


# -- old workdirs --------------------------------------------------------------------------


def upgrade_config(config: dict) -> dict:
    """A config.json dict with today's names (see the module docstring)."""
    config = json.loads(json.dumps(config))  # deep copy
    train = config.get("train", {})
    if "num_steps" in train and "num_train_steps" not in train:
        train["num_train_steps"] = train.pop("num_steps")
    model = config.get("model", {})
    model.setdefault("name", "glow")
    return config


def upgrade_record(record: dict) -> dict:
    """An evaluation record or data_info dict with today's names."""
    record = dict(record)
    if "num_levels" in record and "num_bins" not in record:
        record["num_bins"] = record.pop("num_levels")
    return record


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's resolved config (today's names)."""
    file = path(workdir, CONFIG)
    if not os.path.exists(file):
        raise CheckpointError(f"{workdir} is not a training workdir (no {CONFIG})")
    return ml_collections.ConfigDict(upgrade_config(read_json(file)))


def load_data_info(workdir: str) -> dict:
    file = path(workdir, DATA_INFO)
    if not os.path.exists(file):
        raise CheckpointError(f"{workdir} has no {DATA_INFO}; it was not written by the trainer")
    return upgrade_record(read_json(file))
