"""Evaluate a trained run on a full split: bits/dim with standard error and provenance.

    python -m experiments.evaluate --workdir=runs/digits [--split=test] [--num_samples=8] \
        [--params=ema|raw] [--checkpoint=best|latest]

For label-conditioned runs it reports conditional and marginal bits/dim, and the Bayes-rule
classifier's accuracy and NLL of p(y|x). Writes ``<workdir>/eval_<split>_k<k>.json``.
"""

import os
import time

import jax
from absl import flags
from tqdm import tqdm

from experiments import cli
from flows import data as data_lib
from flows import workdir as wd
from flows.errors import ConfigError
from flows.evaluation import evaluate, summary_line
from flows.train.restore import load_run

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "validation", "train"], "Which split.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Importance samples of the noise (k).")
_PARAMS = flags.DEFINE_enum("params", "auto", ["auto", "ema", "raw"], "Parameters to use.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Eval batch size (0: the config's).")
_SEED = flags.DEFINE_integer(
    "seed", None, "Seed of the dequantization noise (default: the training run's test noise)."
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
    cli.no_extra_arguments(argv)
    use_ema = None if _PARAMS.value == "auto" else _PARAMS.value == "ema"
    model, config, info = load_run(_WORKDIR.value, checkpoint=_CHECKPOINT.value, use_ema=use_ema)
    data = data_lib.load_datasets(config.data)[_SPLIT.value]
    if data is None:
        raise ConfigError(f"the run has no {_SPLIT.value} split (data.validation_size = 0)")
    t0 = time.time()
    with tqdm(total=data.num_examples, desc=f"eval {data.name}", unit="img") as bar:
        record = evaluate(
            model,
            data,
            batch_size=_BATCH.value or config.eval.batch_size,
            key=jax.random.key(_SEED.value)
            if _SEED.value is not None
            else jax.random.fold_in(jax.random.key(config.eval.seed), 1),
            num_samples=_NUM_SAMPLES.value,
            progress=bar.update,
        )
    record.update(
        info, dataset=config.data.name, n_bits=config.data.n_bits, eval_s=time.time() - t0
    )
    path = os.path.join(_WORKDIR.value, f"eval_{_SPLIT.value}_k{_NUM_SAMPLES.value}.json")
    wd.write_json(path, record)
    print(f"{summary_line(record)} -> {path}")


if __name__ == "__main__":
    cli.run(main)
