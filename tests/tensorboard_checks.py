"""Reading a workdir's TensorBoard event files back with TensorBoard's own reader, and the
check that they hold exactly the metrics.jsonl records (each step once)."""

from __future__ import annotations

import json
import os

import numpy as np
from tensorboard.backend.event_processing import event_accumulator

# The TensorBoard tag of each metrics.jsonl field the loop writes (flows.train.tensorboard),
# written out here rather than imported: the names users see in TensorBoard are under test.
TAGS = {
    "train_bpd": "train/bits_per_dim",
    "train_loss": "train/loss",
    "val_bpd": "validation/bits_per_dim",
    "lr": "optim/learning_rate",
    "grad_norm": "optim/grad_norm",
    "nonfinite_steps": "optim/skipped_steps",
    "consecutive_nonfinite": "optim/consecutive_skipped_steps",
    "images_per_s": "speed/images_per_s",
    "wall_time_s": "speed/wall_time_s",
    "train_aux_ce_bits": "train/aux_ce_bits",  # Glow's auxiliary classifier (weight_y)
}


def read_events(workdir: str) -> event_accumulator.EventAccumulator:
    """Every event of every event file in ``workdir`` (restarts purged, as TensorBoard does)."""
    acc = event_accumulator.EventAccumulator(
        workdir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    )
    acc.Reload()
    return acc


def metrics_records(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def assert_events_match_metrics(
    workdir: str, eval_record: dict
) -> event_accumulator.EventAccumulator:
    """Each field of each metrics.jsonl record is a scalar at the record's step, once, equal
    to float32 precision; ``test/bits_per_dim`` ends with the evaluation record's, at its
    ``train_steps``; no other scalar is written. Returns the events."""
    acc, records = read_events(workdir), metrics_records(workdir)
    fields = {k for r in records for k in r} - {"step"}
    assert fields <= TAGS.keys(), fields - TAGS.keys()
    expected_tags = {TAGS[k] for k in fields} | {"test/bits_per_dim"}
    if "marginal_bits_per_dim" in eval_record:  # a conditional run
        expected_tags |= {"test/marginal_bits_per_dim", "test/accuracy", "test/label_nll_nats"}
    assert set(acc.Tags()["scalars"]) == expected_tags
    for field in fields:
        events = acc.Scalars(TAGS[field])
        logged = [r for r in records if field in r]
        assert [e.step for e in events] == [r["step"] for r in logged], field
        np.testing.assert_array_equal(
            np.array([e.value for e in events], np.float32),
            np.array([r[field] for r in logged], np.float32),
            err_msg=field,
        )
    # One point per finished session at its last step (a run extended after it finished has
    # one at each end), the last one the evaluation record's.
    test = acc.Scalars("test/bits_per_dim")
    steps = [e.step for e in test]
    assert steps == sorted(set(steps)) and steps[-1] == eval_record["train_steps"], steps
    assert test[-1].value == np.float32(eval_record["bits_per_dim"])
    return acc
