"""Compare training runs from their workdirs alone (nothing is re-evaluated).

    python -m experiments.compare runs/a runs/b runs/c [--out=compare_out] \\
        [--eval=eval_test.json] [--markdown]

Prints a table of every run (data, model, parameters, steps, wall time, test bits/dim ± SE,
and for label-conditioned runs the conditional bits/dim and Bayes accuracy) and writes
``comparison.csv``, ``comparison.md`` and ``learning_curves.png`` into ``--out``.
``--eval=eval_test_k8.json`` compares the records of ``experiments.evaluate`` instead.
``--markdown`` prints only the Markdown table and notes (the text of ``comparison.md``: the
same workdirs give the same text, for a script that generates docs) and writes files only
when ``--out`` is given.

Runs that measured bits/dim differently (dataset, split, number of examples, levels, image
shape, importance samples) are put in separate groups with a note naming the
difference, and ranked only within their group. Conditional runs are ranked by their marginal
bits/dim, the number comparable with unconditional models. Each run is compared with its
group's rank-1 run by the paired per-example difference (from the ``.npz`` beside each
record) where both were evaluated on the same examples with the same noise; rank 1 is marked
best only when it is lower than every other run by more than 2 standard errors. A missing
workdir is an error; a workdir without the record is listed as "not evaluated" (an error if
no run has one).
See ``flows.reporting.compare``.
"""

from absl import flags

from experiments import cli
from flows.reporting import compare

_OUT = flags.DEFINE_string("out", "compare_out", "Directory for the CSV, Markdown and plot.")
_EVAL = flags.DEFINE_string("eval", compare.EVAL_FILE, "Evaluation record to read in each run.")
_MARKDOWN = flags.DEFINE_bool(
    "markdown",
    False,
    "Print only the Markdown table and notes (deterministic, for generated docs); "
    "files are written only with an explicit --out.",
)


def main(argv):
    runs = compare.read_run_summaries(argv[1:], eval_file=_EVAL.value)
    comparison = compare.compare(runs)
    if _MARKDOWN.value:
        print(compare.format_markdown(comparison), end="")
        if _OUT.present:
            compare.write_outputs(comparison, _OUT.value)
        return
    print(compare.format_table(comparison), end="")
    paths = compare.write_outputs(comparison, _OUT.value)
    print(f"\nwrote {', '.join(paths.values())}")


if __name__ == "__main__":
    cli.run(main)
