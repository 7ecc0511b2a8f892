"""Exact-likelihood sanity check on a discrete toy table.

    python -m experiments.toy_tables --config=configs/toy_gender_age.py
    python -m experiments.toy_tables --config=configs/toy_random_3x4.py
    python -m experiments.toy_tables --config=configs/toy_gender_age.py:smoke \\
        --config.train.num_train_steps=500

Prints, side by side, the exact table, the counting model and the flows' cell masses (joint;
p(x|y) from the label-conditioned flow; p(y|x) by Bayes' rule), the total mass, and the joint
flow's NLL in bits against the table's entropy. The last line is one JSON record (fields in
``flows.toy.experiment``); the exit status is 1 when a check of ``config.check`` fails.
"""

import json
import sys

from absl import flags
from ml_collections import config_flags

from experiments import cli
from flows.toy import experiment
from flows.train import config_checks

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with :variant).")
flags.mark_flags_as_required(["config"])


def main(argv):
    cli.no_extra_arguments(argv)
    config_checks.check_config(_CONFIG.value)  # the fields it shares with the trainer's
    result = experiment.run(_CONFIG.value)
    print(result.report())
    print(json.dumps(result.record), flush=True)
    if not result.record["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main, config_files_of="experiments.toy_tables")
