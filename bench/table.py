"""Markdown table of the benchmark records in ``bench/results``: this library (``jax_<case>``)
against the PyTorch peer (``torch_peer_<case>``), with the speed-up of each throughput.

  python -m bench.table [--results bench/results]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

METRICS = (
    ("train_images_per_s", "train img/s"),
    ("eval_images_per_s", "eval img/s"),
    ("sample_images_per_s", "sample img/s"),
)


def _load(pattern):
    out = {}
    for path in sorted(glob.glob(pattern)):
        if os.path.basename(path).startswith(("jax_paired_", "jax_memory_")):
            continue
        with open(path) as f:
            record = json.load(f)
        out[record["case"]] = record
    return out


def _fmt(v, digits=0):
    return "-" if v is None else f"{v:.{digits}f}"


def table(results_dir):
    ours = _load(os.path.join(results_dir, "jax_*_K*_h*_b*.json"))
    peer = _load(os.path.join(results_dir, "torch_peer_*.json"))
    head = ["case", "backprop", "dtype"]
    for _, name in METRICS:
        head += [f"{name} (jax)", f"{name} (torch)", "x"]
    head += ["compile s", "peak RSS MB (jax / torch)", "train GFLOP/s (jax / torch)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case, r in ours.items():
        base = re.match(r"\d+x\d+x\d+_L\d+_K\d+_h\d+_b\d+", case)
        p = peer.get(base.group(0) if base else case, {})
        cfg = r.get("config", {})
        dtype = cfg.get("compute_dtype", "float32")
        if cfg.get("remat_coupling_nets"):
            dtype += " + remat"
        row = [case, cfg.get("backprop", "-"), dtype]
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


def paired_table(results_dir):
    """Ratios from ``bench.paired``: both sides run alternately under the same load; one row
    per JAX dtype of the record."""
    rows = [
        "| case | threads | backprop | dtype | train x | eval x | sample x "
        "| jax train / eval / sample | torch train / eval / sample |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(glob.glob(os.path.join(results_dir, "jax_paired_*.json"))):
        with open(path) as f:
            r = json.load(f)
        ratios, best = r["ratio_jax_over_torch"], r["best"]
        if "train_images_per_s" in ratios:  # records with a single JAX side
            ratios = {"jax": ratios}
        torch = " / ".join(_fmt(best["torch"][k]) for k, _ in METRICS)
        for side, ratio in ratios.items():
            dtype = "float32" if side == "jax" else side.removeprefix("jax_").replace("_", " + ")
            ours = " / ".join(_fmt(best[side][k]) for k, _ in METRICS)
            rows.append(
                f"| {r['case']} | {r['threads']} | {r['backprop']} | {dtype} | "
                + " | ".join(f"{ratio[k]:.2f}x" for k, _ in METRICS)
                + f" | {ours} | {torch} |"
            )
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results"))
    results = p.parse_args(argv).results
    print(table(results))
    print()
    print(paired_table(results))


if __name__ == "__main__":
    main()
