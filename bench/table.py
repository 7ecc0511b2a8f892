"""Markdown tables of the benchmark records in ``results/bench`` (docs/speed.md's tables).

  python -m bench.table [--results results/bench]

Each table is a function of the records alone and returns ``(markdown, record paths)``;
``scripts/docs.py`` writes them into docs/speed.md with the records' provenance under each.
Ratios against a peer are printed only where both sides ran alternately in one paired
record (``bench.paired``): numbers measured at different times are shown side by side,
never divided.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results", "bench")
METRICS = (
    ("train_images_per_s", "train img/s"),
    ("eval_images_per_s", "eval img/s"),
    ("sample_images_per_s", "sample img/s"),
)


def _records(results_dir: str, pattern: str, *, skip=()) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(glob.glob(os.path.join(results_dir, pattern))):
        if os.path.basename(path).startswith(skip):
            continue
        with open(path) as f:
            out.append((path, json.load(f)))
    return out


def _fmt(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _dtype(config: dict) -> str:
    dtype = config.get("compute_dtype", "float32")
    return dtype + (" + remat" if config.get("remat_coupling_nets") else "")


def glow_throughput(results_dir: str = RESULTS):
    """``bench.throughput`` records of Glow (``jax_<case>``): rates, compile time, GFLOP/s."""
    records = _records(results_dir, "jax_*_K*_h*_b*.json", skip=("jax_paired_", "jax_memory_"))
    head = ["case", "dtype", *(name for _, name in METRICS), "compile s (train step)"]
    head += ["train / eval GFLOP/s", "peak RSS MB"]
    rows = []
    for _, r in records:
        cfg = r.get("config", {})
        rows.append(
            [r["case"], _dtype(cfg)]
            + [_fmt(r.get(k)) for k, _ in METRICS]
            + [
                _fmt(r.get("compile_s"), 1),
                f"{_fmt(r.get('train_gflops'))} / {_fmt(r.get('eval_gflops'))}",
                _fmt(r.get("peak_rss_mb")),
            ]
        )
    return markdown(head, rows), [p for p, _ in records]


def peer_throughput(results_dir: str = RESULTS):
    """``bench/torch_peer.py`` records (normflows' Glow on PyTorch), measured on their own."""
    records = _records(results_dir, "torch_peer_*.json")
    head = ["case", *(name for _, name in METRICS), "train GFLOP/s", "peak RSS MB", "torch"]
    rows = [
        [r["case"]]
        + [_fmt(r.get(k)) for k, _ in METRICS]
        + [_fmt(r.get("train_gflops")), _fmt(r.get("peak_rss_mb")), str(r.get("torch", "?"))]
        for _, r in records
    ]
    return markdown(head, rows), [p for p, _ in records]


def glow_paired(results_dir: str = RESULTS):
    """Ratios from ``bench.paired``: both sides run alternately under the same load; one row
    per JAX dtype of the record."""
    records = _records(results_dir, "jax_paired_*.json")
    head = ["case", "threads", "dtype", "train x", "eval x", "sample x"]
    head += ["ours: train / eval / sample img/s", "normflows: train / eval / sample img/s"]
    rows = []
    for _, r in records:
        ratios, best = r["ratio_jax_over_torch"], r["best"]
        if "train_images_per_s" in ratios:  # records with a single JAX side
            ratios = {"jax": ratios}
        torch = " / ".join(_fmt(best["torch"][k]) for k, _ in METRICS)
        for side, ratio in ratios.items():
            dtype = "float32" if side == "jax" else side.removeprefix("jax_").replace("_", " + ")
            ours = " / ".join(_fmt(best[side][k]) for k, _ in METRICS)
            rows.append(
                [r["case"], str(r["threads"]), dtype]
                + [f"**{ratio[k]:.2f}x**" for k, _ in METRICS]
                + [ours, torch]
            )
    return markdown(head, rows), [p for p, _ in records]


def transformer_throughput(results_dir: str = RESULTS):
    """``bench.throughput --model=tarflow|jet`` records."""
    records = _records(results_dir, "jax_tarflow_*.json") + _records(results_dir, "jax_jet_*.json")
    head = ["model", "case", *(name for _, name in METRICS), "compile s (train step)"]
    head.append("peak RSS MB")
    rows = [
        [r["config"]["model"]["name"], r["case"]]
        + [_fmt(r.get(k), 1) for k, _ in METRICS]
        + [_fmt(r.get("compile_s"), 1), _fmt(r.get("peak_rss_mb"))]
        for _, r in records
    ]
    return markdown(head, rows), [p for p, _ in records]


def input_pipeline(results_dir: str = RESULTS):
    """``bench.input_pipeline`` records: images/s read the ways the trainer reads them."""
    records = _records(results_dir, "input_pipeline_*.json")
    fields = (
        "decode_images_per_s",
        "pipeline_images_per_s",
        "cached_images_per_s",
        "labels_per_s",
        "labels_decoded_per_s",
    )
    head = ["split", "decode img/s (1 thread)", "reader threads img/s", "cached img/s"]
    head += ["labels/s", "labels/s, images decoded"]
    rows = [[f"{r['dataset']} {r['split']}"] + [_fmt(r.get(k)) for k in fields] for _, r in records]
    return markdown(head, rows), [p for p, _ in records]


def memory(results_dir: str = RESULTS):
    """``bench.memory`` records: training memory and compile time against depth K."""
    records = _records(results_dir, "jax_memory_*.json")
    head = ["case", "backprop", "K", "peak RSS MB", "XLA temp MB", "compile s"]
    rows = []
    for _, r in records:
        for mode, by_k in r["runs"].items():
            ks = sorted(by_k, key=lambda k: int(k.lstrip("K")))
            rows.append(
                [
                    r["case"],
                    mode,
                    " / ".join(ks),
                    " / ".join(_fmt(by_k[k].get("peak_rss_mb")) for k in ks),
                    " / ".join(_fmt(by_k[k].get("train_temp_mb")) for k in ks),
                    " / ".join(_fmt(by_k[k].get("compile_s"), 1) for k in ks),
                ]
            )
    return markdown(head, rows), [p for p, _ in records]


def tarflow_sampling(results_dir: str = RESULTS):
    """``bench.sampling`` records: TarFlow's samplers timed alternately on the same latents
    (best round each), the speedups over sequential, Jacobi's updates of each block and
    ``auto``'s choice."""
    records = _records(results_dir, "tarflow_sampling_*.json")
    head = ["case", "tokens", "weights", "batch", "sequential s", "jacobi s", "auto s"]
    head += ["speedup jacobi / auto", "Jacobi updates per block", "auto's blocks"]
    head.append("max \\|x - x_seq\\| (jacobi)")
    rows = []
    for _, r in records:
        for b in r["results"]:
            rows.append(
                [
                    r["case"],
                    str(r["num_tokens"]),
                    r["weights"].split(",")[0],
                    str(b["batch_size"]),
                    *(f"{b[f'{name}_s']:.4g}" for name in ("sequential", "jacobi", "auto")),
                    f"{b['speedup_jacobi']:.2f} / {b['speedup_auto']:.2f}",
                    " ".join(str(n) for n in b["jacobi_updates"]),
                    " ".join(m[0] for m in b["auto_methods"]),
                    f"{b['max_abs_diff_jacobi']:.1e}",
                ]
            )
    return markdown(head, rows), [p for p, _ in records]


TABLES = {
    "glow_throughput": glow_throughput,
    "peer_throughput": peer_throughput,
    "glow_paired": glow_paired,
    "transformer_throughput": transformer_throughput,
    "input_pipeline": input_pipeline,
    "memory": memory,
    "tarflow_sampling": tarflow_sampling,
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=RESULTS)
    results = p.parse_args(argv).results
    for name, fn in TABLES.items():
        print(f"{name}:\n{fn(results)[0]}\n")


if __name__ == "__main__":
    main()
