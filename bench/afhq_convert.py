"""ml-tarflow's published AFHQ architecture, converted: time, memory, agreement, sampling.

Builds ``transformer_flow.Model`` at the size of ml-tarflow's AFHQ checkpoint
(``afhq_model_8_768_8_8_0.07.pth``: 256x256x3, patch 8, width 768, 8 blocks x 8 layers, 3
classes) with random weights, from the reference's own code, in a PyTorch environment
(``--torch_python``; ``scripts/fixtures_ml_tarflow.py --checkpoint_out``, which also records
the reference's log-density of ``--num_images`` random images), then in this process:

  read_s              reading the state dict (.npz) back
  convert_s           ``flows.convert.from_ml_tarflow`` (architecture, permutations, model)
  parameters          our parameter count (== the reference's ``reference_parameters``)
  peak_rss_mb         this process's peak resident memory after conversion and log p
  log_p_max_abs_diff_per_dim   max over the images of |log p_ours - log p_ref| / D (nats),
                      ``log p_ref`` the reference's density of ``2x - 1`` plus ``D log 2``
  sample_s            one conditional image drawn token by token (the sequential
                      decoder), one call of the compiled program; ``sample_compile_s``
                      its trace + lower + compile (``sample_guided_*`` with
                      ``--guidance``: both branches)

The weights are random (output layers ``--output_scale``: small enough that the reference's
float32 density stays finite at this depth), so a sample is noise; the point is the cost and
the agreement.

    python -m bench.afhq_convert --torch_python=/path/to/torch-venv/bin/python \\
        --reference=/path/to/ml-tarflow --out=results/bench
    python -m bench.afhq_convert ... --image_size=32 --patch_size=4 --width=128 \\
        --num_blocks=2 --layers_per_block=2          # a reduced size, seconds

Prints one JSON record as the last line; ``--out DIR`` writes ``DIR/afhq_convert_<size>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.records import write_record
from flows.convert.ml_tarflow import from_ml_tarflow, read_state_dict
from flows.convert.workdir import num_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ("image_size", "channels", "patch_size", "width", "num_blocks", "layers_per_block")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--torch_python", required=True, help="python of a venv with torch")
    p.add_argument("--reference", required=True, help="ml-tarflow checkout")
    for name, default in zip(SIZES, (256, 3, 8, 768, 8, 8), strict=True):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--num_classes", type=int, default=3)
    p.add_argument("--num_images", type=int, default=2)
    p.add_argument(
        "--output_scale",
        type=float,
        default=0.05,
        help="the reference's output-layer weight scale (scripts/fixtures_ml_tarflow.py); the "
        "fixtures' 0.3 overflows its float32 density at 8 blocks of 1024 tokens (log p = -inf)",
    )
    p.add_argument("--guidance", type=float, default=0.0, help="also time guided sampling")
    p.add_argument("--no-sample", dest="sample", action="store_false")
    p.add_argument("--tmp_dir", default=None, help="where the state dict is written")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def reference_checkpoint(args, path: str) -> dict:
    """Runs the reference in the torch venv: random weights -> ``path`` (.npz)."""
    cmd = [
        args.torch_python,
        os.path.join(ROOT, "scripts", "fixtures_ml_tarflow.py"),
        f"--reference={args.reference}",
        f"--checkpoint_out={path}",
        f"--image_size={args.image_size}",
        f"--channels={args.channels}",
        f"--patch_size={args.patch_size}",
        f"--width={args.width}",
        f"--blocks={args.num_blocks}",
        f"--layers={args.layers_per_block}",
        f"--classes={args.num_classes}",
        f"--num_images={args.num_images}",
        f"--output_scale={args.output_scale}",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def timed(fn, *args):
    """``(fn(*args), seconds)``, the result ready."""
    t0 = time.perf_counter()
    value = jax.block_until_ready(fn(*args))
    return value, round(time.perf_counter() - t0, 3)


def time_sampling(model, label, guidance: float, name: str) -> dict:
    """One image drawn token by token as one compiled program: ``<name>_compile_s`` (trace,
    lower and compile, ahead of time) and ``<name>_s`` (one call of the compiled program)."""
    graphdef, state = nnx.split(model)

    def draw(state, key, label):
        return nnx.merge(graphdef, state).sample(1, key, context=label, guidance=guidance)

    start = time.perf_counter()
    program = jax.jit(draw).lower(state, jax.random.key(0), label).compile()
    compile_s = round(time.perf_counter() - start, 3)
    _, seconds = timed(program, state, jax.random.key(0), label)
    return {f"{name}_compile_s": compile_s, f"{name}_s": seconds}


def main(argv=None):
    args = parse_args(argv)
    shape = (args.image_size, args.image_size, args.channels)
    record = {"bench": "afhq_convert", **{k: getattr(args, k) for k in SIZES}}
    record["reference_output_scale"] = args.output_scale
    record["num_classes"] = args.num_classes
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        path = os.path.join(tmp, "state_dict.npz")
        record.update(reference_checkpoint(args, path))
        record["state_dict_mb"] = round(os.path.getsize(path) / 2**20, 1)
        state, record["read_s"] = timed(read_state_dict, path)  # its state/ arrays
        with np.load(path) as f:
            reference = {k: f[k] for k in ("x", "y", "log_p") if k in f.files}
    model, record["convert_s"] = timed(from_ml_tarflow, state, shape)
    del state
    record["parameters"] = num_parameters(model)
    x = jnp.asarray((reference["x"].transpose(0, 2, 3, 1) + 1) / 2, jnp.float32)
    labels = jnp.asarray(reference["y"]) if "y" in reference else None
    d = int(np.prod(shape))
    log_p = np.asarray(jax.jit(lambda x, y: model.log_prob(x, context=y))(x, labels))
    diff = np.abs(log_p.astype(np.float64) - (reference["log_p"] + d * np.log(2))) / d
    record["log_p_max_abs_diff_per_dim"] = float(diff.max())
    record["log_p_reference"] = [float(v) for v in reference["log_p"] + d * np.log(2)]
    record["log_p_ours"] = [float(v) for v in log_p]
    record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.sample:
        label = jnp.zeros((1,), jnp.int32) if labels is not None else None
        record.update(time_sampling(model, label, 0.0, "sample"))
        if args.guidance and labels is not None:
            record.update(time_sampling(model, label, args.guidance, "sample_guided"))
        record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.out:
        size = f"{args.image_size}p{args.patch_size}w{args.width}_{args.num_blocks}x"
        write_record(args.out, f"afhq_convert_{size}{args.layers_per_block}.json", record)
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
