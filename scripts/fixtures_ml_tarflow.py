"""Equivalence fixtures from apple/ml-tarflow's own code: random reference models and their outputs.

Regenerate (a PyTorch environment, outside this project's dependencies, and a checkout of
ml-tarflow, whose ``transformer_flow.py`` is imported from ``--reference``):

    /path/to/torch-venv/bin/python scripts/fixtures_ml_tarflow.py \\
        --reference=/path/to/ml-tarflow [--out=tests/fixtures]

For each case (``CASES``: conditional and unconditional, affine and volume-preserving, two
sizes) it builds ``transformer_flow.Model`` with fixed seeds, replaces its initial weights by
random ones (non-zero output layers, layer norms off their identity, large position and class
embeddings, a ``var`` buffer away from one), and writes ``ml_tarflow_<case>.npz``:

* ``state/<name>``: the float32 ``state_dict`` (buffers included), what
  ``flows.convert.from_ml_tarflow`` reads;
* ``meta``: JSON (the constructor's arguments, the head count, the number of parameters, the
  image shape, the reverse passes' settings);
* ``x`` (N, C, H, W) inputs on the reference's [-1, 1] scale and ``y`` labels (conditional);
* for each dtype ``f32`` and ``f64`` (the same weights, the model and inputs cast with
  ``.double()``; the reference's casts to float32 made a no-op, ``float_keeps_float64``):
  ``<dtype>/z`` the latents (N, T, d), ``<dtype>/logdet`` the model's
  log-det (a mean over dimensions, as it returns it), ``<dtype>/log_p`` the reference's
  log-density of ``x`` on its scale, ``log N(z; 0, I) + D * logdet`` (summed in float64),
  for a conditional model also ``<dtype>/log_p_null`` (``y=None``: the mean class embedding),
  and ``<dtype>/reverse/<name>`` the reverse passes ``Model.reverse(eps, ...)`` from the fixed
  standard-normal ``eps`` (N, T, d) with the settings in ``meta['reverse'][name]``.

tests/test_convert_tarflow.py compares ``flows``' converted models against these without
torch.

With ``--checkpoint_out=FILE.npz`` it writes instead one random model of the sizes given
(``--image_size``, ``--channels``, ``--patch_size``, ``--width``, ``--blocks``, ``--layers``,
``--classes``; heads of 64 channels, as ``Model`` makes them; ``--output_scale`` the output
layers' weight scale, the fixtures' 0.3 by default): its state dict
(``state/<name>``), ``--num_images`` inputs ``x`` with labels ``y`` and the reference's
float32 ``log_p``, and prints a JSON line (parameters, seconds, peak memory);
``bench/afhq_convert.py`` runs it at ml-tarflow's AFHQ size.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import sys
import time

import numpy as np

CASES = {
    # 8x8 RGB, patch 2 (16 tokens of 12 features), 4 heads of 8, 2 blocks of 2 layers.
    "cond": dict(
        image=(8, 8, 3), patch=2, width=32, head_dim=8, blocks=2, layers=2, nvp=True, classes=3
    ),
    # 8x8 grey, patch 4 (4 tokens of 16), 2 heads of 8, 3 blocks (odd) of 1 layer.
    "uncond": dict(
        image=(8, 8, 1), patch=4, width=16, head_dim=8, blocks=3, layers=1, nvp=True, classes=0
    ),
    # Volume-preserving (nvp=False), conditional: 8x8 grey, patch 2, 2 blocks of 1 layer.
    "vp": dict(
        image=(8, 8, 1), patch=2, width=16, head_dim=8, blocks=2, layers=1, nvp=False, classes=2
    ),
}
NUM_EXAMPLES = 4
# Reverse passes of a conditional model: Model.reverse's keyword arguments.
GUIDED = {
    "plain": dict(guidance=0.0),
    "null": dict(guidance=0.0, unconditional=True),  # y=None: the mean class embedding
    "guided_ab": dict(guidance=1.5, guide_what="ab"),
    "guided_a_annealed_temp": dict(
        guidance=2.0, guide_what="a", annealed_guidance=True, attn_temp=0.5
    ),
    "guided_b_temp": dict(guidance=1.0, guide_what="b", attn_temp=1.5),
}


def build(transformer_flow, torch, case: dict, seed: int):
    """``transformer_flow.Model`` of ``case`` with random weights (see the module docstring).
    ``Model`` always makes heads of 64 channels (and asserts a width divisible by 64);
    ``MetaBlock`` takes the head size, so ``Model`` is built without blocks and given the
    blocks it would build, with ``case['head_dim']``."""
    h, w, c = case["image"]
    p = case["patch"]
    torch.manual_seed(seed)
    model = transformer_flow.Model(
        in_channels=c,
        img_size=h,
        patch_size=p,
        channels=case["width"],
        num_blocks=0,
        layers_per_block=case["layers"],
        nvp=case["nvp"],
        num_classes=case["classes"],
    )
    t = model.num_patches
    orders = [transformer_flow.PermutationIdentity(t), transformer_flow.PermutationFlip(t)]
    model.blocks = torch.nn.ModuleList(
        transformer_flow.MetaBlock(
            c * p * p,
            case["width"],
            t,
            orders[i % 2],
            case["layers"],
            head_dim=case["head_dim"],
            nvp=case["nvp"],
            num_classes=case["classes"],
        )
        for i in range(case["blocks"])
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("pos_embed") or name.endswith("class_embed"):
                param.copy_(0.5 * torch.randn_like(param))
            elif "norm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                param.copy_(base + 0.1 * torch.randn_like(param))
            elif "proj_out" in name:
                std = case.get("output_scale", 0.3) / math.sqrt(case["width"])
                scale = std if name.endswith("weight") else 0.05
                param.copy_(scale * torch.randn_like(param))
        model.var.copy_(0.5 + torch.rand_like(model.var))
    return model.eval()


def outputs(torch, model, x, y, eps, conditional: bool) -> dict:
    """The latents, log-dets, log-densities and reverse passes of ``model`` (its dtype)."""
    d = int(np.prod(x.shape[1:]))
    out = {}
    with torch.no_grad():
        z, _, logdet = model(x, y)
        out["z"], out["logdet"] = z, logdet
        out["log_p"] = log_density(z, logdet, d)
        if conditional:
            z0, _, logdet0 = model(x, None)
            out["log_p_null"] = log_density(z0, logdet0, d)
        cases = GUIDED if conditional else {"plain": dict(guidance=0.0)}
        for name, kw in cases.items():
            kw = dict(kw)
            labels = None if kw.pop("unconditional", False) or not conditional else y
            out[f"reverse/{name}"] = model.reverse(eps.clone(), labels, **kw)
    return {k: np.asarray(v.detach().cpu().numpy()) for k, v in out.items()}


@contextlib.contextmanager
def float_keeps_float64(torch):
    """``Tensor.float()`` returns float64 tensors unchanged, for the float64 run.

    The reference runs its layer norms and exponentials on ``x.float()`` and casts back
    (``.type(x.dtype)``), for mixed-precision training; for float64 tensors that cast would
    make it a float32 computation (and its float64 layer-norm weights an error). Its code is
    otherwise used as it is."""
    original = torch.Tensor.float

    def float_(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else original(self, *args, **kwargs)

    torch.Tensor.float = float_
    try:
        yield
    finally:
        torch.Tensor.float = original


def log_density(z, logdet, d: int):
    """The reference's log p on its scale, in float64: its loss reads ``0.5 mean(z^2) -
    logdet`` per dimension; the density adds the Gaussian's constant and sums."""
    z = z.double().flatten(1)
    return -0.5 * (z**2).sum(1) - 0.5 * d * math.log(2 * math.pi) + d * logdet.double()


def write_random_checkpoint(transformer_flow, torch, args) -> dict:
    """The ``--checkpoint_out`` mode (module docstring)."""
    case = dict(
        image=(args.image_size, args.image_size, args.channels),
        patch=args.patch_size,
        width=args.width,
        head_dim=64,
        blocks=args.blocks,
        layers=args.layers,
        nvp=True,
        classes=args.classes,
        output_scale=args.output_scale,
    )
    t0 = time.perf_counter()
    model = build(transformer_flow, torch, case, seed=0)
    build_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1)
    size, c = args.image_size, args.channels
    x = 2 * torch.rand(args.num_images, c, size, size, generator=gen) - 1
    y = torch.arange(args.num_images) % args.classes if args.classes else None
    t0 = time.perf_counter()
    with torch.no_grad():
        z, _, logdet = model(x, y)
    forward_s = time.perf_counter() - t0
    arrays = {f"state/{k}": v.numpy() for k, v in model.state_dict().items()}
    arrays.update(x=x.numpy(), log_p=log_density(z, logdet, c * size * size).numpy())
    if y is not None:
        arrays["y"] = y.numpy()
    np.savez(args.checkpoint_out, **arrays)
    return {
        "reference_parameters": sum(p.numel() for p in model.parameters()),
        "reference_build_s": round(build_s, 3),
        "reference_forward_s": round(forward_s, 3),
        "reference_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch": torch.__version__,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="ml-tarflow checkout")
    parser.add_argument("--out", default=os.path.join("tests", "fixtures"))
    parser.add_argument("--checkpoint_out", help="write one random model's state dict here")
    for name, default in (("image_size", 256), ("channels", 3), ("patch_size", 8)):
        parser.add_argument(f"--{name}", type=int, default=default)
    for name, default in (("width", 768), ("blocks", 8), ("layers", 8), ("classes", 3)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument(
        "--output_scale",
        type=float,
        default=0.3,
        help="--checkpoint_out: the output layers' weights are N(0, (s / sqrt(width))^2)",
    )
    parser.add_argument("--num_images", type=int, default=2)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.reference))
    import torch
    import transformer_flow

    if args.checkpoint_out:
        print(json.dumps(write_random_checkpoint(transformer_flow, torch, args)))
        return 0

    os.makedirs(args.out, exist_ok=True)
    for seed, (name, case) in enumerate(CASES.items()):
        model = build(transformer_flow, torch, case, seed)
        h, w, c = case["image"]
        gen = torch.Generator().manual_seed(100 + seed)
        x = 2 * torch.rand(NUM_EXAMPLES, c, h, w, generator=gen) - 1
        eps = torch.randn(NUM_EXAMPLES, model.num_patches, c * case["patch"] ** 2, generator=gen)
        conditional = bool(case["classes"])
        y = torch.arange(NUM_EXAMPLES) % case["classes"] if conditional else None
        arrays = {f"state/{k}": v.numpy() for k, v in model.state_dict().items()}
        arrays["x"] = x.numpy()
        arrays["eps"] = eps.numpy()
        if conditional:
            arrays["y"] = y.numpy()
        for k, v in outputs(torch, model, x, y, eps, conditional).items():
            arrays[f"f32/{k}"] = v
        model.double()  # in place: the same weights, exactly
        with float_keeps_float64(torch):
            for k, v in outputs(torch, model, x.double(), y, eps.double(), conditional).items():
                arrays[f"f64/{k}"] = v
        meta = {
            "case": case,
            "num_heads": case["width"] // case["head_dim"],
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "image_shape": list(case["image"]),
            "reverse": GUIDED if conditional else {"plain": dict(guidance=0.0)},
            "torch": torch.__version__,
        }
        arrays["meta"] = np.array(json.dumps(meta))
        path = os.path.join(args.out, f"ml_tarflow_{name}.npz")
        np.savez_compressed(path, **arrays)
        print(f"{path}: {os.path.getsize(path) / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
