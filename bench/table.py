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


GUIDED = ("sample_guided_images_per_s", "guided sample img/s")


def _paired_sides(r: dict) -> tuple[dict, dict]:
    """``(the peer's best rates, {our side: (its ratios, its best rates)})`` of a
    ``bench.paired`` record (records from before the peers were generalised name the peer
    side ``torch``)."""
    if "ratio_over_peer" in r:
        ratios, peer_best = r["ratio_over_peer"], r["best"]["peer"]
    else:
        ratios, peer_best = r["ratio_jax_over_torch"], r["best"]["torch"]
        if "train_images_per_s" in ratios:  # records with a single JAX side
            ratios = {"jax": ratios}
    return peer_best, {side: (ratio, r["best"][side]) for side, ratio in ratios.items()}


def _largest(record: dict, side: str, field: str):
    """The largest ``field`` over a paired record's runs of ``side`` (None if unrecorded):
    the peak memory or compile time to quote is the worst run's."""
    values = [run[field] for run in record.get("runs", {}).get(side, []) if run.get(field)]
    return max(values, default=None)


def paired(peer: str, label: str, results_dir: str = RESULTS):
    """Ratios from ``bench.paired --peer=<peer>``: both sides run alternately under the same
    load; one row per variant of our side. A parameter-count column appears once records
    carry counts, and each record's ``architecture_note`` is listed under the table."""
    records = [
        (path, r)
        for path, r in _records(results_dir, "jax_paired_*.json")
        if r.get("peer", "normflows") == peer
    ]
    metrics = list(METRICS)
    if any(GUIDED[0] in _paired_sides(r)[0] for _, r in records):
        metrics.append(GUIDED)
    with_params = any("n_params" in r for _, r in records)
    names = " / ".join(name.removesuffix(" img/s") for _, name in metrics)
    head = [
        "case",
        "threads",
        "dtype",
        *(f"{name.removesuffix(' img/s')} x" for _, name in metrics),
    ]
    head += [f"ours: {names} img/s", f"{label}: {names} img/s"]
    head += ["params: ours / " + label] if with_params else []
    head += [f"peak RSS MB: ours / {label}", "compile s (ours)"]
    rows, notes = [], []
    for _, r in records:
        peer_best, sides = _paired_sides(r)
        theirs = " / ".join(_fmt(peer_best.get(k)) for k, _ in metrics)
        counts = r.get("n_params", {})
        for side, (ratio, best) in sides.items():
            dtype = "float32" if side == "jax" else side.removeprefix("jax_").replace("_", " + ")
            config = r.get("configs", {}).get(side, {})
            if config.get("compute_dtype_requested") == "auto":  # what it resolved to
                dtype = dtype.replace("auto", f"auto: {config['compute_dtype']}")
            ratios = [f"**{ratio[k]:.2f}x**" if ratio.get(k) else "-" for k, _ in metrics]
            ours = " / ".join(_fmt(best.get(k)) for k, _ in metrics)
            row = [r["case"], str(r["threads"]), dtype, *ratios, ours, theirs]
            if with_params:
                row.append(f"{_fmt(counts.get(side))} / {_fmt(counts.get('peer'))}")
            row += [
                f"{_fmt(_largest(r, side, 'peak_rss_mb'))} / "
                f"{_fmt(_largest(r, 'peer', 'peak_rss_mb'))}",
                _fmt(_largest(r, side, "compile_s"), 1),
            ]
            rows.append(row)
        if r.get("architecture_note"):
            notes.append(f"{r['case']}: {r['architecture_note']}.")
    text = markdown(head, rows) + "".join(f"\n\n{note}" for note in notes)
    return text, [p for p, _ in records]


def glow_paired(results_dir: str = RESULTS):
    """Glow against normflows (``bench.paired --peer=normflows``)."""
    return paired("normflows", "normflows", results_dir)


def tarflow_paired(results_dir: str = RESULTS):
    """TarFlow against apple/ml-tarflow (``bench.paired --peer=ml-tarflow``)."""
    return paired("ml-tarflow", "ml-tarflow", results_dir)


def jet_paired(results_dir: str = RESULTS):
    """Jet against big_vision's (``bench.paired --peer=big-vision-jet``)."""
    return paired("big-vision-jet", "big_vision", results_dir)


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
    head.append("auto's measuring s")
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
                    f"{b['auto_choose_s']:.3g}",
                    f"{b['max_abs_diff_jacobi']:.1e}",
                ]
            )
    return markdown(head, rows), [p for p, _ in records]


def afhq_convert(results_dir: str = RESULTS):
    """``bench.afhq_convert`` records: ml-tarflow's model at a size built by its own code
    with random weights, converted; cost, size and agreement."""
    records = _records(results_dir, "afhq_convert_*.json")
    head = ["image", "patch / width / blocks x layers", "parameters: ours / reference"]
    head += ["state dict MB", "read s", "convert s", "max \\|log p - log p_ref\\| / D (nats)"]
    head += ["sample s (compile s)", "guided sample s (compile s)", "peak RSS MB"]

    def timing(r, name):
        if f"{name}_s" not in r:
            return "-"
        return f"{r[f'{name}_s']:,.0f} ({r.get(f'{name}_compile_s', 0):.0f})"

    rows = [
        [
            f"{r['image_size']}x{r['image_size']}x{r['channels']}",
            f"{r['patch_size']} / {r['width']} / {r['num_blocks']} x {r['layers_per_block']}",
            f"{_fmt(r['parameters'])} / {_fmt(r.get('reference_parameters'))}",
            f"{r['state_dict_mb']:,.0f}",
            f"{r['read_s']:.1f}",
            f"{r['convert_s']:.1f}",
            f"{r['log_p_max_abs_diff_per_dim']:.1e}",
            timing(r, "sample"),
            timing(r, "sample_guided"),
            _fmt(r.get("peak_rss_mb")),
        ]
        for _, r in records
    ]
    return markdown(head, rows), [p for p, _ in records]


TABLES = {
    "afhq_convert": afhq_convert,
    "glow_throughput": glow_throughput,
    "peer_throughput": peer_throughput,
    "glow_paired": glow_paired,
    "tarflow_paired": tarflow_paired,
    "jet_paired": jet_paired,
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
