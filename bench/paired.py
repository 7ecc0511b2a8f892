"""Paired comparison with a reference implementation on a shared, noisy machine.

Runs ``bench.throughput`` (this library) and a reference's harness (``--peer``) alternately
in fresh processes, ``--rounds`` times each, with the same data shape, batch, thread count
and ``GLIBC_TUNABLES`` (huge pages for malloc, ``--hugepages``), so both see the same
background load; reports every run, the best of each side and the ratios of the bests.

  --peer=normflows       bench.torch_peer: normflows' Glow (PyTorch); ours: ``--model=glow``
  --peer=ml-tarflow      bench.tarflow_peer: apple/ml-tarflow's ``transformer_flow.Model``
                         (PyTorch, its MNIST setting); ours: ``--model=tarflow``
  --peer=big-vision-jet  bench.jet_peer: big_vision's Jet (JAX, Flax linen); ours:
                         ``--model=jet``

Each peer has default architecture settings (``PEERS``); ``--set key=value`` (repeatable)
changes one on both sides: ours gets it as a ``config.model`` field (Glow: as
``bench.throughput``'s flag), the peer's harness as its flag of the same name. ``--ours
key=value`` sets a field of our side alone (e.g. ``backprop``). The peer runs in its own
interpreter, ``--peer_python``: by default ``/work/refvenv-torch/bin/python`` (torch, numpy,
normflows) for the torch peers and ``/work/refvenv-bv/bin/python`` (jax, flax, optax, einops,
absl-py, ml_collections, scipy) for Jet; ``--reference=DIR`` is passed to the harnesses that
import a reference checkout (each says where it looks by default).

``--compute_dtype`` lists our side's variants, one run of each per round: DTYPE or
DTYPE+remat (Glow's recomputed coupling-net activations), e.g. float32,bfloat16+remat; for a
family without a ``compute_dtype`` field only float32 (what it computes in) is possible.
``--conditional`` (ml-tarflow only): both sides label-conditioned (10 classes, random labels),
and sampling also timed with classifier-free guidance ``--guidance``.

``--threads=1`` also runs XLA single-threaded (``--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1``, for both JAX sides), which degrades gracefully under load and
so gives the steadiest ratio; otherwise ``--threads`` must be the core count (XLA:CPU uses
every core).

  python -m bench.paired --peer=normflows --image_shape=32,32,1 --batch_size=64 --threads=2 \
      --rounds=2 --compute_dtype=float32,bfloat16+remat --out results/bench
  python -m bench.paired --peer=ml-tarflow --threads=2 --rounds=2 --out results/bench

The record carries both sides' commands and settings (each run's own record keeps its
thread count, ``GLIBC_TUNABLES`` and ``XLA_FLAGS``), both parameter counts and, when they
differ, an ``architecture_note``. Prints it as the last line; ``--out DIR`` also writes
``DIR/jax_paired_<case>_t<threads>[_<variants>].json`` with its provenance.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys

from bench.records import write_record
from flows.errors import ConfigError
from flows.models.registry import describe_model, get_family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("train_images_per_s", "eval_images_per_s", "sample_images_per_s")
GUIDED = "sample_guided_images_per_s"
TORCH_PYTHON = "/work/refvenv-torch/bin/python"
BIG_VISION_PYTHON = "/work/refvenv-bv/bin/python"
HUGEPAGES = "glibc.malloc.hugetlb=1"
ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
NUM_CLASSES = 10  # bench.throughput's conditional models
GLOW_FLAGS = ("num_levels", "num_steps", "hidden_channels", "backprop")  # throughput's flags
# What each run's record keeps in the paired record.
RUN_FIELDS = (
    *KEYS,
    GUIDED,
    "compile_s",
    "peak_rss_mb",
    "threads",
    "glibc_tunables",
    "xla_flags",
    "loadavg_before",
    "loadavg_after",
)


@dataclasses.dataclass(frozen=True)
class Peer:
    """A reference harness and our family measured against it."""

    harness: str  # module run with the peer's python from the repository root
    python: str  # default interpreter
    model: str  # our family (bench.throughput --model)
    image_shape: str
    settings: dict  # architecture, by our field names (= the harness's flag names)
    takes_reference: bool = True  # the harness imports a checkout (--reference)
    conditional: bool = False  # both sides can be label-conditioned
    # Our fields that make our model the reference's architecture (flows.convert's
    # options; the harness has no flag for them): same parameters, same function.
    same_model: dict = dataclasses.field(default_factory=dict)

    def ours_args(self, values: dict) -> list[str]:
        """Settings or fields as ``bench.throughput`` arguments: ``--field=key=value``, or
        for Glow the flags throughput has for its fields (its record reads them)."""
        return [
            f"--{k}={v}" if self.model == "glow" and k in GLOW_FLAGS else f"--field={k}={v}"
            for k, v in values.items()
        ]


PEERS = {
    "normflows": Peer(
        "bench.torch_peer",
        TORCH_PYTHON,
        "glow",
        "32,32,1",
        {"num_levels": 3, "num_steps": 8, "hidden_channels": 128},
        takes_reference=False,
    ),
    "ml-tarflow": Peer(
        "bench.tarflow_peer",
        TORCH_PYTHON,
        "tarflow",
        "28,28,1",
        {"patch_size": 4, "width": 128, "num_blocks": 4, "layers_per_block": 4, "num_heads": 2},
        conditional=True,
        same_model={
            "null_label": "mean",
            "context_bias": False,
            "final_norm": False,
            "norm_epsilon": 1e-5,
            "gelu_approximate": False,
        },
    ),
    "big-vision-jet": Peer(
        "bench.jet_peer",
        BIG_VISION_PYTHON,
        "jet",
        "28,28,1",
        {
            "patch_size": 2,
            "num_couplings": 8,
            "block_depth": 1,
            "width": 128,
            "num_heads": 4,
            "coupling_pattern": "channels,channels,channels,channels,spatial",
        },
        same_model={"spatial_cut": True, "qkv_init": "separate"},
    ),
}


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} takes key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _variant_args(peer: Peer, variant: str) -> list[str]:
    """Our side's arguments for one ``--compute_dtype`` entry."""
    dtype, _, remat = variant.partition("+")
    if remat not in ("", "remat"):
        raise ConfigError(f"--compute_dtype entry {variant!r}: DTYPE or DTYPE+remat")
    if peer.model == "glow":
        return [f"--compute_dtype={dtype}", *(["--remat_nets"] if remat else [])]
    if remat:
        raise ConfigError(f"--compute_dtype entry {variant!r}: +remat is Glow's alone")
    if "compute_dtype" in get_family(peer.model).defaults:
        return [f"--field=compute_dtype={dtype}"]
    if dtype != "float32":
        raise ConfigError(f"model {peer.model!r} has no compute_dtype field: only float32")
    return []  # a family without the field computes in float32


def side_name(variant: str) -> str:
    return "jax" if variant == "float32" else "jax_" + variant.replace("+", "_")


def plan(args) -> tuple[str, dict[str, list[str]], dict]:
    """``(case, {side: command}, settings)`` of a paired run; the peer's side is ``peer``."""
    if args.peer not in PEERS:
        raise ConfigError(f"--peer must be one of {sorted(PEERS)}, got {args.peer!r}")
    peer = PEERS[args.peer]
    settings = {**peer.settings, **_pairs(args.set, "--set")}
    ours_only = _pairs(args.ours, "--ours")
    if args.backprop:
        ours_only["backprop"] = args.backprop
    if args.conditional and not peer.conditional:
        raise ConfigError(f"--conditional: the {args.peer} harness is unconditional")
    image_shape = args.image_shape or peer.image_shape
    common = [f"--image_shape={image_shape}", f"--batch_size={args.batch_size}"]
    common += args.timing.split()
    ours = [sys.executable, "-m", "bench.throughput", f"--model={peer.model}", *common]
    ours += peer.ours_args({**settings, **peer.same_model, **ours_only})
    python = args.peer_python or peer.python
    python = os.path.abspath(python) if os.sep in python else python
    theirs = [python, "-m", peer.harness, *common]
    theirs += [f"--threads={args.threads}", *(f"--{k}={v}" for k, v in settings.items())]
    if args.reference and peer.takes_reference:
        theirs.append(f"--reference={args.reference}")
    if args.conditional:
        ours += ["--field=conditional=True", f"--guidance={args.guidance}"]
        theirs += [f"--num_classes={NUM_CLASSES}", f"--guidance={args.guidance}"]
    cmds = {side_name(v): ours + _variant_args(peer, v) for v in args.compute_dtype.split(",")}
    cmds["peer"] = theirs
    h, w, c = (int(s) for s in image_shape.split(","))
    if peer.model == "glow":  # the name bench.throughput and bench.torch_peer give the case
        case = (
            f"{h}x{w}x{c}_L{settings['num_levels']}_K{settings['num_steps']}"
            f"_h{settings['hidden_channels']}_b{args.batch_size}"
        )
    else:
        cfg = {"name": peer.model, **settings, "conditional": bool(args.conditional)}
        case = f"{describe_model(cfg).replace(' ', '_')}_{h}x{w}x{c}_b{args.batch_size}"
    return case, cmds, settings


def environment(args) -> dict[str, str]:
    """Both sides' environment: huge pages, and XLA on one thread with ``--threads=1``."""
    env = dict(os.environ)
    if args.hugepages:
        # glibc's malloc asks for transparent huge pages for its large blocks. Each training
        # step allocates (and page-faults in) its activation buffers afresh; with 4 KiB pages
        # that costs XLA's autodiff path ~20% of a step.
        tunables = env.get("GLIBC_TUNABLES", "")
        if HUGEPAGES not in tunables:
            env["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, HUGEPAGES) if t)
    if args.threads == 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + ONE_THREAD_XLA_FLAGS).strip()
    elif args.threads != os.cpu_count():
        raise ConfigError("--threads: XLA:CPU runs on every core or (--threads=1) on one")
    return env


def run_side(side: str, cmd: list[str], env) -> dict:
    """The last JSON line a side prints; its bad input (exit 2) is ours, one line."""
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode == 2:
        lines = proc.stderr.strip().splitlines() or ["exit 2"]
        raise ConfigError(f"{side} ({cmd[2]}): {lines[-1].removeprefix('error: ')}")
    if proc.returncode:
        raise RuntimeError(f"{side} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def architecture_note(n_params: dict[str, int | None], peer: str) -> str | None:
    """A note when our parameter count differs from the peer's (then the two sides are not
    the same model)."""
    ours = sorted({n for side, n in n_params.items() if side != "peer" and n is not None})
    theirs = n_params.get("peer")
    if theirs is None or not ours or ours == [theirs]:
        return None
    counts = " / ".join(f"{n:,}" for n in ours)
    return f"parameter counts differ (ours {counts}, {peer} {theirs:,}): not the same architecture"


def summarize(runs: dict[str, list[dict]]) -> tuple[dict, dict]:
    """``(best, ratio)``: each side's best run per rate, and ours over the peer's."""
    keys = [k for k in (*KEYS, GUIDED) if all(r.get(k) is not None for r in runs["peer"])]
    best = {
        side: {k: max((r[k] for r in rs if r.get(k) is not None), default=None) for k in keys}
        for side, rs in runs.items()
    }
    ratio = {
        side: {
            k: None if best[side][k] is None else round(best[side][k] / best["peer"][k], 2)
            for k in keys
        }
        for side in runs
        if side != "peer"
    }
    return best, ratio


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peer", default="normflows", help=f"one of {', '.join(PEERS)}")
    p.add_argument("--image_shape", default=None, help="H,W,C (default: the peer's setting)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--set", action="append", default=[], help="key=value for both sides")
    p.add_argument("--ours", action="append", default=[], help="key=value: our field alone")
    p.add_argument("--backprop", default=None, help="our side's backprop field")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--compute_dtype",
        default="float32",
        help="comma-separated variants of our side, one run of each per round: DTYPE or "
        "DTYPE+remat (Glow's recomputed coupling-net activations)",
    )
    p.add_argument("--conditional", action="store_true", help="ml-tarflow: p(x | y) sides")
    p.add_argument("--guidance", type=float, default=1.0, help="with --conditional")
    p.add_argument("--timing", default="--warmup=3 --iters=8 --repeats=2")
    p.add_argument("--peer_python", default=None, help="the peer's interpreter (see above)")
    p.add_argument("--reference", default=None, help="the reference checkout (see above)")
    p.add_argument(
        "--hugepages",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"run both sides with GLIBC_TUNABLES={HUGEPAGES}",
    )
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    case, cmds, settings = plan(args)
    python = cmds["peer"][0]
    if os.sep in python and not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ConfigError(
            f"the peer's interpreter {python} does not exist: create its venv (bench/README.md) "
            f"or pass --peer_python"
        )
    env = environment(args)
    runs = {side: [] for side in cmds}
    configs = {}
    for _ in range(args.rounds):
        for side, cmd in cmds.items():
            r = run_side(side, cmd, env)
            configs.setdefault(side, r.get("config", {}))
            runs[side].append({k: r.get(k) for k in RUN_FIELDS if k in r})
            print(json.dumps({side: runs[side][-1]}), flush=True)
    best, ratio = summarize(runs)
    n_params = {side: cfg.get("n_params") for side, cfg in configs.items()}
    record = {
        "peer": args.peer,
        "model": PEERS[args.peer].model,
        "case": case,
        "settings": settings,
        "conditional": args.conditional,
        "guidance": args.guidance if args.conditional else None,
        "threads": args.threads,
        "backprop": args.backprop,
        "compute_dtype": args.compute_dtype,
        "glibc_tunables": env.get("GLIBC_TUNABLES", ""),
        "xla_flags": env.get("XLA_FLAGS", ""),
        "commands": {side: " ".join(cmd) for side, cmd in cmds.items()},
        "configs": configs,
        "n_params": n_params,
        "architecture_note": architecture_note(n_params, args.peer),
        "best": best,
        "ratio_over_peer": ratio,
        "runs": runs,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if args.out:
        variants = args.compute_dtype.split(",")
        suffix = "" if variants == ["float32"] else "_" + "_".join(variants).replace("+", "_")
        write_record(args.out, f"jax_paired_{case}_t{args.threads}{suffix}.json", record)
    print(json.dumps(record))


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:  # bad flags, a missing interpreter or checkout: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
