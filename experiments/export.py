"""Export a trained run's parameters as a small workdir to ship (the models in ``models/``).

    python -m experiments.export --workdir=runs/tarflow_digits_cond_small \\
        --out=models/tarflow_digits_cond_small
    python -m experiments.evaluate --workdir=models/tarflow_digits_cond_small
    python -m experiments.sample --workdir=models/tarflow_digits_cond_small --class_grid

The export holds what evaluate, sample, latents and compare read, and no more: the run's
config (with no EMA: the exported parameters are the ones the run evaluates, its EMA when it
kept one), ``data_info.json``, the parameters as the step-0 checkpoint (with a zero
optimizer state, which compresses to almost nothing, so ``experiments.train`` can fine-tune
from it), and ``exported_from.json``: the run's name, the step and kind of the parameters,
the run's own test record (bits/dim and its provenance) and the export's provenance. The
parameters are copied bit for bit, so the export's test bits/dim equal the run's on the same
split and key. ``docs/models.md`` (``python scripts/docs.py``) is the model cards of the
exports under ``models/``, made from their own evaluation records.
"""

import os

from absl import flags

from experiments import cli
from flows import workdir as wd

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run to export.")
_OUT = flags.DEFINE_string("out", None, "The new directory to write (e.g. models/NAME).")
_CHECKPOINT = flags.DEFINE_enum(
    "checkpoint", "best", ["best", "latest"], "Which of the run's checkpoints to export."
)
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
    cli.no_extra_arguments(argv)
    cli.check_run_workdir(_WORKDIR.value)
    from flows.convert.workdir import num_parameters, write_workdir  # after flag checks
    from flows.train.restore import load_run

    model, config, info = load_run(_WORKDIR.value, checkpoint=_CHECKPOINT.value)
    data_info = wd.load_data_info(_WORKDIR.value)
    run_name = os.path.basename(os.path.normpath(_WORKDIR.value))
    test_record = wd.path(_WORKDIR.value, wd.EVAL_TEST)
    origin = {
        "source": "flows",
        "run": run_name,
        "checkpoint_step": info["checkpoint_step"],
        "parameters": info["parameters"],
        "run_test_record": wd.read_json(test_record) if os.path.exists(test_record) else None,
    }
    config.unlock()
    config.train.ema_decay = 0.0  # the exported parameters are the evaluated ones
    config.lock()
    write_workdir(
        _OUT.value,
        model,
        config,
        num_bins=info["num_bins"],
        origin=origin,
        origin_file=wd.EXPORTED,
        train=data_info.get("train", "unknown"),
        num_train=data_info.get("num_train", 0),
    )
    print(
        f"{_WORKDIR.value} ({info['parameters']} params, step {info['checkpoint_step']}, "
        f"{num_parameters(model):,} parameters) -> {_OUT.value}; next: python -m "
        f"experiments.evaluate --workdir={_OUT.value}"
    )


if __name__ == "__main__":
    cli.run(main)
