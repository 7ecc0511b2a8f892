"""Throughput of the reference TarFlow: apple/ml-tarflow's own ``transformer_flow.Model`` (PyTorch).

The model is imported from a checkout of https://github.com/apple/ml-tarflow kept OUTSIDE this
repository (nothing of it is copied here): ``--reference=DIR``, by default the environment
variable ``FLOWS_ML_TARFLOW`` or else ``/work/refs/apple+ml-tarflow``; DIR must hold
``transformer_flow.py``. It needs torch only (the checkout's ``utils.py``, which needs
torchvision and torchmetrics, is not imported).

Defaults: ml-tarflow's MNIST notebook setting (``train_local.ipynb``): 28x28x1, patch 4,
width 128, 4 blocks of 4 layers (its ``head_dim`` of 64 gives 2 heads), float32, here at batch
64. Measured after warm-up, in the timing protocol of ``bench.peer_common``:

  train_images_per_s    the step of ml-tarflow's ``train.py``: images on [-1, 1] plus Gaussian
                        noise (``--noise_std``), ``z, outputs, logdets = model(x, y)``,
                        ``loss = model.get_loss(z, logdets)``, backward, ``AdamW(betas=(0.9,
                        0.95), weight_decay=1e-4)`` step (the learning-rate schedule, a scalar
                        per step, is left out)
  eval_images_per_s     the forward pass and per-image ``-log p`` under ``torch.no_grad()``
  sample_images_per_s   ``model.reverse(noise, y)`` (token by token with its key/value cache)
  sample_guided_images_per_s  ``model.reverse(noise, y, guidance=--guidance)``: conditional
                        models (``--num_classes``) only; runs the unconditional branch too

``--num_classes=0`` (default) builds p(x) like ``bench.throughput``'s unconditional TarFlow;
``--num_classes=10`` is the notebook's class-conditional model (labels drawn at random).
The record has the parameter count (``config.n_params``) and torch's FLOP count of one
training step (``torch.utils.flop_counter``: matrix products and attention only).

Prints one JSON record as the last line (``--out DIR`` also writes
``DIR/tarflow_peer_<case>.json``). From the repository root, in a venv with torch:

  /work/refvenv-torch/bin/python -m bench.tarflow_peer --threads=2 [--num_classes=10]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.utils.flop_counter

from bench import peer_common

DEFAULT_REFERENCE = os.environ.get("FLOWS_ML_TARFLOW", "/work/refs/apple+ml-tarflow")
HEAD_DIM = 64  # ml-tarflow's MetaBlock head_dim, which its Model does not expose
MLP_EXPANSION = 4  # its AttentionBlock expansion, likewise


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    peer_common.add_common_args(p, image_shape="28,28,1")
    p.add_argument("--reference", default=DEFAULT_REFERENCE, help="ml-tarflow checkout")
    p.add_argument("--patch_size", type=int, default=4)
    p.add_argument("--width", type=int, default=128, help="ml-tarflow's channels")
    p.add_argument("--num_blocks", type=int, default=4)
    p.add_argument("--layers_per_block", type=int, default=4)
    p.add_argument(
        "--num_heads", type=int, default=2, help=f"must be width / {HEAD_DIM} (ml-tarflow's)"
    )
    p.add_argument("--mlp_ratio", type=int, default=MLP_EXPANSION, help="must be 4")
    p.add_argument("--num_classes", type=int, default=0, help="0: p(x); N: p(x | y)")
    p.add_argument("--guidance", type=float, default=1.0, help="guided sampling's weight")
    p.add_argument("--noise_std", type=float, default=0.1, help="training input noise")
    peer_common.add_flush_denormal_arg(p)
    args = p.parse_args(argv)
    if args.num_heads * HEAD_DIM != args.width:
        p.error(f"ml-tarflow's heads are {HEAD_DIM} wide: --num_heads must be width / {HEAD_DIM}")
    if args.mlp_ratio != MLP_EXPANSION:
        p.error(f"ml-tarflow's Model fixes the MLP expansion at {MLP_EXPANSION}")
    return p, args


def main(argv=None):
    p, args = parse_args(argv)
    height, width, channels = peer_common.image_shape(p, args)
    if height != width:
        p.error("ml-tarflow's Model takes square images (img_size)")
    modes = peer_common.parse_modes(p, args)
    reference = peer_common.reference_dir(p, args, "transformer_flow.py")
    sys.path.insert(0, reference)
    import transformer_flow  # the reference's own module

    timings = peer_common.Timings(args, modes)
    torch.set_num_threads(args.threads)
    flush = torch.set_flush_denormal(args.flush_denormal) and args.flush_denormal
    torch.manual_seed(args.seed)

    model = transformer_flow.Model(
        in_channels=channels,
        img_size=height,
        patch_size=args.patch_size,
        channels=args.width,
        num_blocks=args.num_blocks,
        layers_per_block=args.layers_per_block,
        nvp=True,
        num_classes=args.num_classes,
    )
    n_params = sum(q.numel() for q in model.parameters())
    optimizer = torch.optim.AdamW(
        model.parameters(), betas=(0.9, 0.95), lr=args.lr, weight_decay=1e-4
    )
    bs = args.batch_size
    data = torch.randint(0, 256, (bs, channels, height, width), dtype=torch.uint8)
    labels = torch.randint(0, args.num_classes, (bs,)) if args.num_classes else None
    num_tokens = (height // args.patch_size) ** 2
    token_features = channels * args.patch_size**2

    def noisy_images():
        x = data.float() / 127.5 - 1.0  # ToTensor + Normalize(0.5, 0.5): [-1, 1]
        return x + args.noise_std * torch.randn_like(x)

    losses = []

    def train_step():
        optimizer.zero_grad()
        z, _, logdets = model(noisy_images(), labels)
        loss = model.get_loss(z, logdets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    def eval_step():
        with torch.no_grad():
            z, _, logdets = model(noisy_images(), labels)
            (0.5 * z.pow(2).mean(dim=[1, 2]) - logdets).sum().item()

    def sample_step(guidance=0.0):
        with torch.no_grad():
            noise = torch.randn(bs, num_tokens, token_features)
            model.reverse(noise, labels, guidance=guidance).sum().item()

    flops = torch.utils.flop_counter.FlopCounterMode(display=False)
    with flops:
        train_step()
    train_gflop = flops.get_total_flops() / 1e9

    timings.run("train", train_step)
    model.eval()
    timings.run("eval", eval_step)
    timings.run("sample", sample_step)
    if args.num_classes and args.guidance > 0:
        timings.run("sample_guided", lambda: sample_step(args.guidance))
    measured = timings.fields()

    cond = f"_cond{args.num_classes}" if args.num_classes else ""
    case = args.case or (
        f"{height}x{width}x{channels}_p{args.patch_size}_w{args.width}_{args.num_blocks}x"
        f"{args.layers_per_block}{cond}_b{bs}"
    )
    train = measured["train_images_per_s"]
    record = {
        "peer": "ml-tarflow",
        "case": case,
        **measured,
        "torch_train_gflop_per_step": round(train_gflop, 3),
        "torch_train_gflops": peer_common.rnd(train and train_gflop * train / bs),
        "config": {
            "image_shape": [height, width, channels],
            "batch_size": bs,
            "patch_size": args.patch_size,
            "width": args.width,
            "num_blocks": args.num_blocks,
            "layers_per_block": args.layers_per_block,
            "num_heads": args.num_heads,
            "mlp_ratio": MLP_EXPANSION,
            "num_classes": args.num_classes,
            "guidance": args.guidance if args.num_classes else None,
            "nvp": True,
            "attention": "scaled_dot_product_attention"
            if transformer_flow.Attention.USE_SPDA
            else "einsum",
            "noise": f"gaussian, std {args.noise_std} on [-1, 1]",
            "optimizer": f"AdamW(lr={args.lr}, betas=(0.9, 0.95), weight_decay=1e-4)",
            "n_params": n_params,
            "reference": reference,
        },
        "first_train_loss": round(losses[0], 4),
        "last_train_loss": round(losses[-1], 4),
        "threads": torch.get_num_threads(),
        "flush_denormal": flush,
        "torch": torch.__version__,
        **peer_common.common_record_fields(),
    }
    peer_common.emit(record, args.out, f"tarflow_peer_{case}.json")


if __name__ == "__main__":
    main()
