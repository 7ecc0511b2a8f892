#!/usr/bin/env bash
# The main job: install what is needed, train Glow on the offline digits, evaluate on test.
# Extra arguments go to experiments.train, e.g. --config.train.num_train_steps=1000.
source "$(dirname "$0")/setup_env.sh"
WORKDIR="${WORKDIR:-runs/digits}"
python -m experiments.train --config=configs/glow_digits.py --workdir="$WORKDIR" "$@"
