"""Train a flow from a config file; rerunning the same command resumes from the workdir.

    python -m experiments.train --config=configs/glow_digits.py --workdir=runs/digits \
        [--config.model.num_steps=8 --config.optim.lr=5e-4 ...]
"""

from absl import flags
from ml_collections import config_flags

from experiments import cli
from flows.evaluation import summary_line
from flows.train.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with :variant).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, samples).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    record = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    print(f"test: {summary_line(record)} -> {_WORKDIR.value}/eval_test.json")


if __name__ == "__main__":
    cli.run(main)
