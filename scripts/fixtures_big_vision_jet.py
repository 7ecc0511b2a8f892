"""Equivalence fixtures of big_vision's Jet, made by its own code (``tests/test_convert_jet.py``
compares our converted Jet against them; the suite needs neither big_vision nor this script).

    /work/refvenv-bv/bin/python scripts/fixtures_big_vision_jet.py \
        --reference=/path/to/google-research/big_vision [--out=tests/fixtures]

The interpreter needs jax, flax (linen), einops, absl-py, ml_collections, scipy and numpy (a
virtualenv of its own: the project does not depend on big_vision). ``--reference`` is a
checkout of google-research/big_vision; the script imports
``big_vision.models.proj.jet.jet`` from it and nothing from this project.

big_vision's package imports ``tensorflow.io.gfile`` at module level (``big_vision.utils``)
for file access that building and applying a model never uses. Without TensorFlow installed
the script puts a stub module in ``sys.modules`` under that name: an empty ``gfile`` and two
placeholder classes ``Tensor`` and ``Variable``, which einops' backend detection checks
inputs against (it looks for a ``tensorflow`` entry in ``sys.modules``). ``flax.io`` decides
whether TensorFlow exists when it is first imported, so flax's checkpoint module is imported
before the stub goes in. A real TensorFlow, if importable, is used instead of the stub.

For each of two small settings (``SETTINGS``: channel and spatial couplings, a scanned
coupling count that is not a multiple of the pattern, a scale_factor other than 2, block
depths 1 and 2) it builds the reference ``Model``, initialises it and then perturbs the
parameters (the output layers, which start at zero, get normal weights; the layer norms
move off 1 and 0) so every coupling acts, and writes ``big_vision_jet_<name>.npz``:

* ``params/<name>``: the parameters, flattened with ``/`` as big_vision's ``.npz``
  checkpoints are (so the file is also a big_vision checkpoint: ``load_checkpoint`` reads it);
* ``fixture/model_kwargs``: the ``Model``'s constructor arguments (JSON), ``fixture/image_shape``;
* ``fixture/x``: images on the unit scale, float32; the reference sees ``2 x - 1``;
* ``fixture/latents``, ``fixture/log_det``: its forward pass (latents in its image layout);
* ``fixture/log_p``: ``sum log N(z; 0, 1) + log_det``, the density of ``2 x - 1``;
* ``fixture/z_fixed``, ``fixture/reverse``, ``fixture/reverse_log_det``: its inverse on fixed
  standard-normal latents (reverse: images on its [-1, 1] scale);
* the same four outputs with a ``_f64`` suffix, computed under ``jax_enable_x64`` from the
  same (float32-valued) parameters and inputs cast to float64. The reference's ViT fixes its
  matmul dtype to float32 by a default argument (``vit.Encoder(dtype_mm="float32")``); for
  these outputs the script passes ``dtype_mm="float64"`` instead, nothing else changes;
* ``fixture/num_params``, ``fixture/num_frozen``: its parameter count and the part of it
  that is frozen projection matrices (``*FREEZE_ME``).

It also writes ``big_vision_jet_counts.json``: the reference's parameter counts (abstract
shapes only, ``jax.eval_shape``) at larger settings (``COUNT_SETTINGS``: the 28x28 MNIST-size
one and big_vision's ImageNet 64x64 configs).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = {
    "small": {
        "image_shape": (8, 8, 2),  # patch 2: 16 tokens of 8 features
        "model": {
            "depth": 5,
            "block_depth": 1,
            "emb_dim": 16,
            "num_heads": 2,
            "scale_factor": 1.5,
            "ps": 2,
            "kinds": ["channels", "channels", "spatial"],
            "channels_coupling_projs": ["random"],
            "spatial_coupling_projs": ["checkerboard", "hstripes-inv"],
        },
        "seed": 0,
    },
    "wide": {
        "image_shape": (12, 12, 3),  # patch 2: 36 tokens of 12 features
        "model": {
            "depth": 4,
            "block_depth": 2,
            "emb_dim": 16,
            "num_heads": 4,
            "scale_factor": 2.0,
            "ps": 2,
            "kinds": ["spatial", "channels"],
            "channels_coupling_projs": ["random"],
            "spatial_coupling_projs": ["vstripes", "checkerboard-inv"],
        },
        "seed": 1,
    },
}
BATCH = 3

_CCCCS = ["channels", "channels", "channels", "channels", "spatial"]
COUNT_SETTINGS = [
    {  # the MNIST-size setting
        "image_shape": (28, 28, 1),
        "model": {
            "depth": 8,
            "block_depth": 1,
            "emb_dim": 128,
            "num_heads": 4,
            "ps": 2,
            "kinds": _CCCCS,
        },
    },
    {  # big_vision's configs/proj/jet/imagenet64.py (both sizes it names)
        "image_shape": (64, 64, 3),
        "model": {"depth": 32, "block_depth": 2, "emb_dim": 512, "num_heads": 8, "kinds": _CCCCS},
    },
    {
        "image_shape": (64, 64, 3),
        "model": {"depth": 64, "block_depth": 5, "emb_dim": 512, "num_heads": 8, "kinds": _CCCCS},
    },
]


def import_reference(reference: str):
    """big_vision's jet and vit modules, with a TensorFlow stub when TensorFlow is missing
    (module docstring)."""
    import flax.training.checkpoints  # noqa: F401  (before the stub: flax.io probes for TF)

    try:
        importlib.import_module("tensorflow.io.gfile")
    except ImportError:
        tf = types.ModuleType("tensorflow")
        tf.io = types.ModuleType("tensorflow.io")
        tf.io.gfile = types.ModuleType("tensorflow.io.gfile")
        tf.Tensor = type("Tensor", (), {})
        tf.Variable = type("Variable", (), {})
        sys.modules.update(
            {"tensorflow": tf, "tensorflow.io": tf.io, "tensorflow.io.gfile": tf.io.gfile}
        )
    sys.path.insert(0, os.path.abspath(reference))
    jet = importlib.import_module("big_vision.models.proj.jet.jet")
    vit = importlib.import_module("big_vision.models.vit")
    return jet, vit


def flatten(tree, prefix=""):
    """A nested mapping as {"a/b/c": leaf} (big_vision's names in its .npz checkpoints)."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if hasattr(v, "items"):
            out.update(flatten(v, name + "/"))
        else:
            out[name] = v
    return out


def unflatten(flat):
    tree = {}
    for name, v in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def perturb(flat, rng):
    """Every coupling acts: output heads get normal weights, layer norms move off (1, 0),
    the other weights keep their initialisation; the projections are untouched."""
    out = {}
    for name, v in flat.items():
        if "FREEZE_ME" in name:
            out[name] = v
        elif "final_proj" in name:
            std = 0.3 / np.sqrt(v.shape[-2]) if name.endswith("kernel") else 0.05
            out[name] = (std * rng.standard_normal(v.shape)).astype(np.float32)
        elif "LayerNorm" in name or "encoder_norm" in name:
            base = 1.0 if name.endswith("scale") else 0.0
            out[name] = (base + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
        elif name.endswith("bias"):
            out[name] = (0.05 * rng.standard_normal(v.shape)).astype(np.float32)
        else:
            out[name] = v.astype(np.float32)
    return out


def count(jet, image_shape, model_kwargs):
    import jax

    model = jet.Model(**model_kwargs)
    x = jax.ShapeDtypeStruct((1, *image_shape), np.float32)
    shapes = jax.eval_shape(
        lambda k, x: model.init(k, x, method=model.forward), jax.random.key(0), x
    )["params"]
    sizes = {n: int(np.prod(s.shape)) for n, s in flatten(shapes).items()}
    total = sum(sizes.values())
    frozen = sum(v for n, v in sizes.items() if "FREEZE_ME" in n)
    return total, frozen


def run_reference(jet, params, model_kwargs, x, z_fixed):
    """(latents, log_det, log_p, reverse, reverse_log_det) of the reference on x (unit
    scale; it sees 2x - 1) and on the fixed latents, in the dtype of the arrays given."""
    import jax
    import jax.numpy as jnp

    model = jet.Model(**model_kwargs)
    variables = {"params": params}
    latents, log_det = jax.jit(lambda v, x: model.apply(v, x, method=model.forward))(
        variables, 2 * x - 1
    )
    log_normal = -0.5 * (latents**2 + jnp.log(2 * jnp.pi))
    log_p = jnp.sum(log_normal, axis=(1, 2, 3)) + log_det
    reverse, reverse_log_det = jax.jit(lambda v, z: model.apply(v, z, method=model.inverse))(
        variables, z_fixed
    )
    return [np.asarray(a) for a in (latents, log_det, log_p, reverse, reverse_log_det)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="a big_vision checkout")
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    args = parser.parse_args()
    jet, vit = import_reference(args.reference)
    import jax

    os.makedirs(args.out, exist_ok=True)
    for name, setting in SETTINGS.items():
        image_shape, kwargs = tuple(setting["image_shape"]), setting["model"]
        model_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        model = jet.Model(**model_kwargs)
        rng = np.random.default_rng(setting["seed"])
        x = rng.uniform(size=(BATCH, *image_shape)).astype(np.float32)
        z_fixed = rng.standard_normal((BATCH, *image_shape)).astype(np.float32)
        init = model.init(
            jax.random.key(setting["seed"]), jax.numpy.asarray(2 * x - 1), method=model.forward
        )
        flat = {k: np.asarray(v) for k, v in flatten(jax.device_get(init["params"])).items()}
        flat = perturb(flat, rng)
        params = unflatten(flat)
        outputs = run_reference(jet, params, model_kwargs, x, z_fixed)

        with jax.enable_x64(True):
            encoder = vit.Encoder
            vit.Encoder = functools.partial(encoder, dtype_mm="float64")
            try:
                params64 = jax.tree.map(lambda a: a.astype(np.float64), params)
                outputs64 = run_reference(
                    jet, params64, model_kwargs, x.astype(np.float64), z_fixed.astype(np.float64)
                )
            finally:
                vit.Encoder = encoder
        assert all(a.dtype == np.float64 for a in outputs64)

        total, frozen = count(jet, image_shape, model_kwargs)
        assert total == sum(v.size for v in flat.values())
        record = {f"params/{k}": v for k, v in flat.items()}
        record.update(
            {
                "fixture/model_kwargs": np.array(json.dumps(kwargs)),
                "fixture/image_shape": np.array(image_shape),
                "fixture/x": x,
                "fixture/z_fixed": z_fixed,
                "fixture/num_params": np.array(total),
                "fixture/num_frozen": np.array(frozen),
            }
        )
        keys = ("latents", "log_det", "log_p", "reverse", "reverse_log_det")
        for key, a, a64 in zip(keys, outputs, outputs64, strict=True):
            record[f"fixture/{key}"] = a
            record[f"fixture/{key}_f64"] = a64
        path = os.path.join(args.out, f"big_vision_jet_{name}.npz")
        np.savez_compressed(path, **record)
        print(f"{path}: {total} parameters ({frozen} frozen), {os.path.getsize(path)} bytes")

    counts = []
    for setting in COUNT_SETTINGS:
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in setting["model"].items()}
        total, frozen = count(jet, setting["image_shape"], kwargs)
        counts.append({**setting, "num_params": total, "num_frozen": frozen})
        print(setting["image_shape"], setting["model"], total, frozen)
    path = os.path.join(args.out, "big_vision_jet_counts.json")
    with open(path, "w") as f:
        json.dump(counts, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
