"""Markdown table of the benchmark records in ``bench/results``: this library (``jax_<case>``)
against the PyTorch peer (``torch_peer_<case>``), with the speed-up of each throughput.

  python -m bench.table [--results bench/results]
"""

from __future__ import annotations

import argparse
import glob
import json
import os

METRICS = (
    ("train_images_per_s", "train img/s"),
    ("eval_images_per_s", "eval img/s"),
    ("sample_images_per_s", "sample img/s"),
)


def _load(pattern):
    out = {}
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            record = json.load(f)
        out[record["case"]] = record
    return out


def _fmt(v, digits=0):
    return "-" if v is None else f"{v:.{digits}f}"


def table(results_dir):
    ours = _load(os.path.join(results_dir, "jax_*_K*_h*_b*.json"))
    peer = _load(os.path.join(results_dir, "torch_peer_*.json"))
    head = ["case", "backprop"]
    for _, name in METRICS:
        head += [f"{name} (jax)", f"{name} (torch)", "x"]
    head += ["compile s", "peak RSS MB (jax / torch)", "train GFLOP/s (jax / torch)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case, r in ours.items():
        p = peer.get(case, {})
        row = [case, r.get("config", {}).get("backprop", "-")]
        for key, _ in METRICS:
            a, b = r.get(key), p.get(key)
            row += [_fmt(a), _fmt(b), _fmt(a / b, 2) + "x" if a and b else "-"]
        row += [
            _fmt(r.get("compile_s"), 1),
            f"{_fmt(r.get('peak_rss_mb'))} / {_fmt(p.get('peak_rss_mb'))}",
            f"{_fmt(r.get('train_gflops'))} / {_fmt(p.get('train_gflops'))}",
        ]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results"))
    print(table(p.parse_args(argv).results))


if __name__ == "__main__":
    main()
