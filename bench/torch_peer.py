"""Throughput of the PyTorch peer: normflows' multi-scale Glow on CPU.

Builds the Glow of normflows' examples/glow.ipynb (``nf.flows.GlowBlock`` = affine coupling with
channel split and sigmoid scale, LU-parametrised 1x1 convolution, ActNorm; ``nf.flows.Squeeze``
and ``nf.flows.Merge`` in an ``nf.MultiscaleFlow``), with an unconditional learned prior
``nf.distributions.GlowBase`` (per-channel learned mean and log-scale) at every level.

Measures, after data-dependent ActNorm initialisation and warm-up:
  train_images_per_s   dequantize random uint8 data, log-prob, backward, Adam step
  eval_images_per_s    log-prob under torch.no_grad()
  sample_images_per_s  model.sample(batch_size) under torch.no_grad()
Timing, flags and the record's common fields: ``bench.peer_common`` (the protocol of
``bench.throughput``: warm-up, blocks of ``--iters`` calls, median per block, best of
``--repeats``; every block kept, to show the noise).

Prints one JSON record as the last line; with ``--out DIR`` it also writes
``DIR/torch_peer_<case>.json``. Runs in a venv with torch and normflows (see bench/README.md),
from the repository root:

  /work/refvenv-torch/bin/python -m bench.torch_peer --image_shape=32,32,1 --num_levels=3 \
      --num_steps=8 --hidden_channels=128 --batch_size=64 --threads=2
"""

from __future__ import annotations

import argparse
import math
import warnings

import normflows as nf
import torch

from bench import peer_common
from bench.peer_common import rnd

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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    peer_common.add_common_args(p, image_shape="32,32,1")
    p.add_argument("--num_levels", type=int, default=3, help="L")
    p.add_argument("--num_steps", type=int, default=8, help="K, steps per level")
    p.add_argument("--hidden_channels", type=int, default=128)
    peer_common.add_flush_denormal_arg(p)
    args = p.parse_args(argv)
    return p, args


def main(argv=None):
    p, args = parse_args(argv)
    image_shape = peer_common.image_shape(p, args)
    modes = peer_common.parse_modes(p, args)
    height, width, channels = image_shape
    timings = peer_common.Timings(args, modes)
    torch.set_num_threads(args.threads)
    flush = torch.set_flush_denormal(args.flush_denormal) and args.flush_denormal
    torch.manual_seed(args.seed)

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

    timings.run("train", train_step)
    model.eval()
    timings.run("eval", eval_step)
    timings.run("sample", sample_step)
    measured = timings.fields()

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
    train, evals = measured["train_images_per_s"], measured["eval_images_per_s"]
    record = {
        "peer": "normflows",
        "case": case,
        **measured,
        "train_gflop_per_step": round(gflop, 3),
        "train_gflops": rnd(train and gflop * train / bs),
        "eval_gflops": rnd(evals and fwd_flop * evals / 1e9),
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
        "init_bits_per_dim": round(
            (-init_logp.mean().item() / n_dims + math.log(256.0)) / math.log(2.0), 4
        ),
        "last_train_loss": last_loss[0],
        "threads": torch.get_num_threads(),
        "flush_denormal": flush,
        "torch": torch.__version__,
        "normflows": getattr(nf, "__version__", "unknown"),
        **peer_common.common_record_fields(),
    }
    peer_common.emit(record, args.out, f"torch_peer_{case}.json")


if __name__ == "__main__":
    main()
