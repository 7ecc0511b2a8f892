"""Train a flow from a config file; rerunning the same command resumes from the workdir.

    python -m experiments.train --config=configs/glow_digits.py --workdir=runs/digits \\
        [--config.model.num_steps=8 --config.optim.lr=5e-4 ...] [--allow_config_change]

A rerun with another config than the workdir's is refused (exit 2, naming each changed key)
unless ``--allow_config_change``; ``--debug`` shows tracebacks of user errors.

Prints the test result (``test: ... -> <workdir>/eval_test.json``), then, last, what the run
wrote into the workdir and its wall time (``flows.train.loop.outputs_line``).
"""

import os
import time

import jax
from absl import flags
from ml_collections import config_flags

from experiments import cli
from flows import workdir as wd
from flows.evaluation import summary_line
from flows.train.loop import outputs_line, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with :variant).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, samples).")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume even though the config differs from the workdir's (the change and its step are "
    "recorded in config_history.jsonl and shown in evaluation records and compare).",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    cli.no_extra_arguments(argv)
    t0 = time.time()
    stored = wd.path(_WORKDIR.value, wd.CONFIG)
    if os.path.exists(stored):  # the run to resume: read before anything is touched
        cli.check_json_object(stored)
    record = train_and_evaluate(
        _CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CHANGE.value
    )
    if jax.process_index() == 0:  # every process of a multi-host run returns the record
        print(f"test: {summary_line(record)} -> {_WORKDIR.value}/eval_test.json")
        print(outputs_line(_WORKDIR.value, record, time.time() - t0))


if __name__ == "__main__":
    cli.run(main, config_files_of="experiments.train")
