"""Throughput of the PyTorch peer: normflows' multi-scale Glow on CPU.

Builds the Glow of normflows' examples/glow.ipynb (``nf.flows.GlowBlock`` = affine coupling with
channel split and sigmoid scale, LU-parametrised 1x1 convolution, ActNorm; ``nf.flows.Squeeze``
and ``nf.flows.Merge`` in an ``nf.MultiscaleFlow``), with an unconditional learned prior
``nf.distributions.GlowBase`` (per-channel learned mean and log-scale) at every level.

Measures, after data-dependent ActNorm initialisation and warm-up:
  train_images_per_s   dequantize random uint8 data, log-prob, backward, Adam step
  eval_images_per_s    log-prob under torch.no_grad()
  sample_images_per_s  model.sample(batch_size) under torch.no_grad()
Each is the median over ``--iters`` timed iterations; the block is repeated ``--repeats`` times
and the best median is reported (all block medians are kept in the record, to show noise).

Prints one JSON record as the last line; with ``--out DIR`` it also writes
``DIR/torch_peer_<case>.json``. Runs in its own venv (see bench/README.md):

  .venv-peer/bin/python bench/torch_peer.py --image_shape=32,32,1 --num_levels=3 \
      --num_steps=8 --hidden_channels=128 --batch_size=64 --threads=2
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import time
import warnings

import normflows as nf
import torch

# normflows' LU 1x1 conv calls the deprecated torch.lu at construction; the warning is noise.
warnings.filterwarnings("ignore", message="torch.lu is deprecated")


def glow_forward_flop_per_image(image_shape, num_levels, num_steps, hidden_channels):
    """Analytic FLOPs (2 per multiply-add) of one Glow forward pass for one image.

    Counts the convolutions only: per step at resolution HxW with C channels, the coupling net
    (3x3 conv C/2 -> h, 1x1 conv h -> h, 3x3 conv h -> C for shift and scale of C/2 channels)
    costs 2*HW*(9*c_in*h + h*h + 9*h*C) and the 1x1 invertible convolution 2*HW*C*C.
    Level l (1-based) runs at (H/2**l) x (W/2**l) with C = c0 * 2**(l+1) channels.
    """
    height, width, c0 = image_shape
    h = hidden_channels
    total = 0
    for level in range(1, num_levels + 1):
        hw = (height // 2**level) * (width // 2**level)
        c = c0 * 2 ** (level + 1)
        c_in = (c + 1) // 2
        c_out = 2 * (c // 2)
        coupling = 2 * hw * (9 * c_in * h + h * h + 9 * h * c_out)
        conv1x1 = 2 * hw * c * c
        total += num_steps * (coupling + conv1x1)
    return total


def train_gflop_per_step(image_shape, num_levels, num_steps, hidden_channels, batch_size):
    """Analytic GFLOP of one training step: forward + backward ~= 3x forward."""
    fwd = glow_forward_flop_per_image(image_shape, num_levels, num_steps, hidden_channels)
    return 3 * fwd * batch_size / 1e9


def build_glow(image_shape, num_levels, num_steps, hidden_channels):
    """normflows' multi-scale Glow, as in examples/glow.ipynb but with unconditional GlowBase."""
    height, width, channels = image_shape
    big_l = num_levels
    q0, merges, flows = [], [], []
    # normflows orders levels latent -> data: level i=0 is the coarsest (no split).
    for i in range(big_l):
        level_flows = [
            nf.flows.GlowBlock(
                channels * 2 ** (big_l + 1 - i),
                hidden_channels,
                split_mode="channel",
                scale=True,
                use_lu=True,
            )
            for _ in range(num_steps)
        ]
        level_flows.append(nf.flows.Squeeze())
        flows.append(level_flows)
        if i > 0:
            merges.append(nf.flows.Merge())
            s = 2 ** (big_l - i)
            latent_shape = (channels * s, height // s, width // s)
        else:
            s = 2**big_l
            latent_shape = (channels * 2 ** (big_l + 1), height // s, width // s)
        q0.append(nf.distributions.GlowBase(latent_shape))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def dequantize(v):
    """Uniform dequantisation of 8-bit values onto [0, 1)."""
    return (v.float() + torch.rand(v.shape)) / 256.0


def cpu_busy_s():
    """System-wide busy CPU seconds (all cores) from /proc/stat; None where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_block(fn, iters):
    """Median wall time (s) of fn() over iters calls."""
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(fn, batch_size, warmup, iters, repeats, quiet_frac=None, max_s=600.0):
    """Best block-median throughput (images/s) and every block as (images/s, other CPU frac).

    Each block is ``iters`` timed calls; its throughput is batch_size / median time. "Other CPU
    frac" is the CPU that other processes used during the block, as a fraction of all cores.
    With ``quiet_frac`` set, blocks are run until ``repeats`` of them saw at most that much
    foreign CPU (or ``max_s`` passes) and only those count: a shared 2-core machine otherwise
    measures the neighbours (torch's OpenMP threads slow down ~10x when oversubscribed).
    """
    for _ in range(warmup):
        fn()
    blocks, clean = [], []
    ncpu = os.cpu_count() or 1
    t_end = time.perf_counter() + max_s
    while len(clean) < repeats:
        busy0, own0, t0 = cpu_busy_s(), own_cpu_s(), time.perf_counter()
        ips = batch_size / time_block(fn, iters)
        wall = time.perf_counter() - t0
        busy1 = cpu_busy_s()
        other = None
        if busy0 is not None and busy1 is not None:
            other = max((busy1 - busy0) - (own_cpu_s() - own0), 0.0) / (wall * ncpu)
        blocks.append((round(ips, 2), None if other is None else round(other, 3)))
        if quiet_frac is None or (other is not None and other <= quiet_frac):
            clean.append(ips)
        elif time.perf_counter() > t_end:
            break
    best = max(clean) if clean else max(b[0] for b in blocks)
    return best, blocks, len(clean)


def rnd(v, nd=2):
    return None if v is None else round(v, nd)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image_shape", default="32,32,1", help="H,W,C")
    p.add_argument("--num_levels", type=int, default=3, help="L")
    p.add_argument("--num_steps", type=int, default=8, help="K, steps per level")
    p.add_argument("--hidden_channels", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20, help="timed iterations per block")
    p.add_argument("--repeats", type=int, default=2, help="timed blocks; best median kept")
    p.add_argument(
        "--quiet_frac",
        type=float,
        default=None,
        help="count only blocks during which other processes used at most this CPU fraction; "
        "run blocks until --repeats such blocks (or --max_s)",
    )
    p.add_argument("--max_s", type=float, default=600.0, help="per-mode limit with --quiet_frac")
    p.add_argument(
        "--modes", default="train,eval,sample", help="which of train,eval,sample to measure"
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--flush_denormal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.set_flush_denormal (XLA:CPU flushes denormals too); without it the first "
        "Adam steps hit multi-second denormal stalls on this CPU",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", default=None, help="name in the output file; derived if omitted")
    p.add_argument("--out", default=None, help="directory for torch_peer_<case>.json")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    image_shape = tuple(int(s) for s in args.image_shape.split(","))
    height, width, channels = image_shape
    torch.set_num_threads(args.threads)
    flush = torch.set_flush_denormal(args.flush_denormal) and args.flush_denormal
    torch.manual_seed(args.seed)
    load_before = os.getloadavg()

    model = build_glow(image_shape, args.num_levels, args.num_steps, args.hidden_channels)
    bs = args.batch_size
    data = torch.randint(0, 256, (bs, channels, height, width), dtype=torch.uint8)

    # Data-dependent ActNorm init: the first log-prob sets every ActNorm from this batch.
    # (MultiscaleFlow.log_prob takes y positionally even when class_cond=False.)
    with torch.no_grad():
        init_logp = model.log_prob(dequantize(data), None)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    last_loss = [float("nan")]

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = model.forward_kld(dequantize(data))
        loss.backward()
        optimizer.step()
        last_loss[0] = loss.item()

    def eval_step():
        with torch.no_grad():
            model.log_prob(dequantize(data), None).sum().item()

    def sample_step():
        with torch.no_grad():
            x, _ = model.sample(bs)
            x.sum().item()

    t_start, busy_start, own_start = time.perf_counter(), cpu_busy_s(), own_cpu_s()
    timing = (args.warmup, args.iters, args.repeats, args.quiet_frac, args.max_s)
    modes = args.modes.split(",")
    skipped = (None, [], 0)
    train, train_blocks, train_clean = (
        measure(train_step, bs, *timing) if "train" in modes else skipped
    )
    model.eval()
    evals, eval_blocks, eval_clean = measure(eval_step, bs, *timing) if "eval" in modes else skipped
    sample, sample_blocks, sample_clean = (
        measure(sample_step, bs, *timing) if "sample" in modes else skipped
    )
    wall = time.perf_counter() - t_start
    # CPU used by other processes while timing, as a fraction of all cores: a noise indicator.
    busy_end = cpu_busy_s()
    other_cpu_frac = None
    if busy_start is not None and busy_end is not None:
        other = (busy_end - busy_start) - (own_cpu_s() - own_start)
        other_cpu_frac = round(max(other, 0.0) / (wall * os.cpu_count()), 3)

    gflop = train_gflop_per_step(
        image_shape, args.num_levels, args.num_steps, args.hidden_channels, bs
    )
    fwd_flop = glow_forward_flop_per_image(
        image_shape, args.num_levels, args.num_steps, args.hidden_channels
    )
    case = args.case or (
        f"{height}x{width}x{channels}_L{args.num_levels}_K{args.num_steps}"
        f"_h{args.hidden_channels}_b{bs}"
    )
    n_dims = height * width * channels
    record = {
        "peer": "normflows",
        "case": case,
        "train_images_per_s": rnd(train),
        "eval_images_per_s": rnd(evals),
        "sample_images_per_s": rnd(sample),
        "train_gflop_per_step": round(gflop, 3),
        "train_gflops": rnd(train and gflop * train / bs),
        "eval_gflops": rnd(evals and fwd_flop * evals / 1e9),
        "train_blocks": train_blocks,
        "eval_blocks": eval_blocks,
        "sample_blocks": sample_blocks,
        "clean_blocks": {"train": train_clean, "eval": eval_clean, "sample": sample_clean},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "config": {
            "image_shape": list(image_shape),
            "num_levels": args.num_levels,
            "num_steps": args.num_steps,
            "hidden_channels": args.hidden_channels,
            "batch_size": bs,
            "prior": "GlowBase (unconditional, learned per-channel mean/log-scale)",
            "coupling": "affine, split_mode=channel, scale_map=sigmoid",
            "conv1x1": "LU",
            "optimizer": f"Adam(lr={args.lr})",
            "n_params": n_params,
        },
        "timing": {
            "warmup": args.warmup,
            "iters": args.iters,
            "repeats": args.repeats,
            "statistic": "best block; block = median over iters",
            "blocks": "[images/s, CPU fraction used by other processes]",
            "quiet_frac": args.quiet_frac,
            "wall_s": round(wall, 1),
            "other_processes_cpu_frac": other_cpu_frac,
        },
        "init_bits_per_dim": round(
            (-init_logp.mean().item() / n_dims + math.log(256.0)) / math.log(2.0), 4
        ),
        "last_train_loss": last_loss[0],
        "threads": torch.get_num_threads(),
        "flush_denormal": flush,
        "torch": torch.__version__,
        "normflows": getattr(nf, "__version__", "unknown"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    line = json.dumps(record)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"torch_peer_{case}.json")
        with open(path + ".tmp", "w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
        os.replace(path + ".tmp", path)
    print(line)


if __name__ == "__main__":
    main()
