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

JSON files are written atomically (a temporary file in the same directory, then a rename), so
a run killed at any instant leaves either the old or the new file, never half of one.

Workdirs written before the names were made unambiguous are read through ``upgrade_*``: the
data's quantisation was ``num_levels`` (now ``num_bins``) and the training length
``train.num_steps`` (now ``train.num_train_steps``); Glow's ``model.num_levels`` /
``model.num_steps`` (L and K) kept their names.
"""

from __future__ import annotations

import json
import os
import tempfile

import ml_collections

from flows.errors import CheckpointError

CONFIG = "config.json"
DATA_INFO = "data_info.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
BEST = "best"
SAMPLES = "samples"
EVAL_TEST = "eval_test.json"


def path(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)


def write_text_atomic(file: str, text: str) -> None:
    """Writes ``text`` to ``file`` through a temporary file and a rename."""
    directory = os.path.dirname(os.path.abspath(file))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(file)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(file: str, obj) -> None:
    write_text_atomic(file, json.dumps(obj, indent=2) + "\n")


def read_json(file: str):
    with open(file) as f:
        return json.load(f)


# -- metrics.jsonl ------------------------------------------------------------------------


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``metrics.jsonl``; a partial last line (a run killed mid-write) is
    dropped, a damaged line elsewhere is an error."""
    file = path(workdir, METRICS)
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
            if i == len(lines) - 1:  # no newline after it: the write was cut off
                break
            raise CheckpointError(f"{file}: line {i + 1} is not valid JSON") from None
    return records


def append_metrics(workdir: str, record: dict) -> None:
    with open(path(workdir, METRICS), "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(workdir: str, last_step: int) -> None:
    """On resume: keep only the records up to the step resumed from (atomically)."""
    kept = [r for r in read_metrics(workdir) if r["step"] <= last_step]
    write_text_atomic(path(workdir, METRICS), "".join(json.dumps(r) + "\n" for r in kept))


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
