"""apple/ml-tarflow's ``transformer_flow.Model`` weights as a ``flows`` TarFlow.

``from_ml_tarflow(state_dict, image_shape)`` reads the architecture off the state dict's
shapes (blocks, layers, width, token features and so the patch size, tokens, MLP ratio,
classes, ``nvp``) and returns a ``TarFlow`` built with the options that make it compute the
reference's function (``flows.models.tarflow``'s docstring: ``null_label='mean'``,
``context_bias=False``, ``final_norm=False``, ``norm_epsilon=1e-5``,
``gelu_approximate=False``, ``sampling_variance=True``). The head count is not in the
weights: ml-tarflow's ``Model`` always makes heads of 64 channels, so it is ``width // 64``
unless given (``num_heads``).

The weights are permuted, never changed: a patch's features are channel-major in the
reference (``unfold``: ``c p^2 + i p + j``) and ``(i p + j) C + c`` here, so the input
projection's columns, the output projection's rows and ``var`` are permuted; the output
projection's rows are also reordered from ``(log-scale, shift)`` to our ``(mu, alpha)``; the
reversed blocks' position embeddings are reversed (the reference attaches them to image
positions, we to sequence positions); PyTorch's ``Linear`` weights are transposed.

The change of variables. The reference sees ``x' = 2x - 1`` on ``[-1, 1]``, returns latents
``z`` (N, T, C p^2) in its token layout and a log-det that is a *mean* over the D dimensions,
so its density of ``x'`` is ``log p'(x') = log N(z; 0, I) + D * logdet`` and ours, of ``x``
on the unit scale, is ``log p(x) = log p'(2x - 1) + D log 2`` (bits/dim as in its
``evaluate_bpd.py``, which counts ``D log 128`` for 256 levels on [-1, 1]). Our latents are
the image-shaped ``latents_from_reference(z)``. Sampling: the reference's ``reverse(eps, y)``
decodes ``eps * sqrt(var)``; ours ``inverse(latents)`` decodes the latents it is given and
``sample`` draws them as ``sqrt(latent_variance) * eps``, so ``2 inverse(sqrt(var) * eps)
- 1`` is the reference's image (``latents_from_reference`` of both ``eps`` and ``var``).

``load_checkpoint(path, image_shape, **model_fields)`` reads a ``.pth`` (``torch.load``:
PyTorch is the optional extra ``pip install ".[convert]"``) or an ``.npz`` of the state
dict (no PyTorch), and returns ``(model, config.model dict)``. A checkpoint named as
ml-tarflow's trainer names them (``{dataset}_model_{patch}_{width}_{blocks}_{layers}_
{noise}.pth``) gives ``noise_sigma = noise / 2`` (its Gaussian noise std on [-1, 1], on
our unit scale) unless ``noise_sigma`` is given; a conditional model gets
``label_dropout = 0.1`` (what every conditional recipe of ml-tarflow trains with; the weights
do not say), so that guided sampling is allowed.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from flows.bijectors import Patchify
from flows.errors import CheckpointError, ConfigError
from flows.models import build_model
from flows.models.tarflow import TarFlow

SOURCE = "ml-tarflow"
HEAD_CHANNELS = 64  # ml-tarflow's Model: MetaBlock's head_dim, never passed
# The TarFlow options that make it ml-tarflow's function.
REFERENCE_OPTIONS = {
    "null_label": "mean",
    "context_bias": False,
    "final_norm": False,
    "norm_epsilon": 1e-5,
    "gelu_approximate": False,
    "sampling_variance": True,
}
CONDITIONAL_LABEL_DROPOUT = 0.1
# ml-tarflow's train.py: f'{dataset}_model_{patch}_{channels}_{blocks}_{layers}_{noise:.2f}.pth'
_CHECKPOINT_NAME = re.compile(r"_model_\d+_\d+_\d+_\d+_(\d+\.\d+|uniform)\.pth$")
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.proj_in\.weight")
_LAYER_KEY = re.compile(r"blocks\.0\.attn_blocks\.(\d+)\.attention\.qkv\.weight")
# Our Linear layers of one transformer layer <- the reference's, under attn_blocks.<l>.
_LINEARS = {("attn", "qkv"): "attention.qkv", ("attn", "out"): "attention.proj",
            ("fc1",): "mlp.main.0", ("fc2",): "mlp.main.2"}  # fmt: skip
_NORMS = {("norm1",): "attention.norm", ("norm2",): "mlp.norm"}


def _numpy(value) -> np.ndarray:
    """A numpy array of a state dict entry (numpy, JAX or a torch tensor; bfloat16 and
    float16 widened to float32) without importing torch."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if value.is_floating_point() and value.element_size() < 4:
            value = value.float()
        value = value.numpy()
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating) and value.dtype.itemsize < 4:
        value = value.astype(np.float32)
    return value


def _not_ml_tarflow(why: str) -> CheckpointError:
    return CheckpointError(
        f"not a state dict of ml-tarflow's transformer_flow.Model ({why}); give the file its "
        "train.py saves (model.state_dict())"
    )


def _shape(sd, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise _not_ml_tarflow(f"no {key!r}")
    return tuple(sd[key].shape)


def infer_architecture(state_dict: Mapping, image_shape) -> dict:
    """The reference model's sizes from its state dict's shapes, for images ``(H, W, C)``:
    ``num_blocks, layers_per_block, width, mlp_ratio, num_tokens, token_features,
    patch_size, num_classes (None: unconditional), nvp``. A state dict of another model, or
    an image shape the checkpoint cannot take, is a one-line error."""
    h, w, c = _image_shape(image_shape)
    sd = state_dict
    blocks = sorted(int(m[1]) for k in sd if (m := _BLOCK_KEY.fullmatch(k)))
    if not blocks:
        raise _not_ml_tarflow("no 'blocks.<i>.proj_in.weight'")
    if blocks != list(range(len(blocks))):
        raise _not_ml_tarflow(f"its blocks are numbered {blocks}")
    layers = sorted(int(m[1]) for k in sd if (m := _LAYER_KEY.fullmatch(k)))
    if not layers or layers != list(range(len(layers))):
        raise _not_ml_tarflow("no 'blocks.0.attn_blocks.<l>.attention.qkv.weight' from 0 on")
    width, features = _shape(sd, "blocks.0.proj_in.weight")
    num_tokens = _shape(sd, "blocks.0.pos_embed")[0]
    hidden = _shape(sd, "blocks.0.attn_blocks.0.mlp.main.0.weight")[0]
    if hidden % width:
        raise _not_ml_tarflow(f"MLP width {hidden} is not a multiple of the width {width}")
    outputs = _shape(sd, "blocks.0.proj_out.weight")[0]
    if outputs not in (features, 2 * features):
        raise _not_ml_tarflow(f"{outputs} outputs per token for {features} token features")
    classes = _shape(sd, "blocks.0.class_embed")[0] if "blocks.0.class_embed" in sd else None
    patch = math.isqrt(features // c) if features % c == 0 else 0
    if patch < 1 or patch * patch * c != features:
        raise ConfigError(
            f"the checkpoint's tokens have {features} features, not p*p*C for C={c} channels "
            f"(--image_shape {h},{w},{c}): give the images' channel count"
        )
    if h % patch or w % patch:
        raise ConfigError(
            f"image size {h}x{w} is not divisible by the checkpoint's patch size {patch}"
        )
    if (h // patch) * (w // patch) != num_tokens:
        side = math.isqrt(num_tokens) * patch
        raise ConfigError(
            f"the checkpoint has {num_tokens} tokens of {patch}x{patch} patches, not the "
            f"{(h // patch) * (w // patch)} of {h}x{w} images (ml-tarflow's images are square: "
            f"{side}x{side})"
        )
    arch = {
        "num_blocks": len(blocks),
        "layers_per_block": len(layers),
        "width": width,
        "mlp_ratio": hidden // width,
        "num_tokens": num_tokens,
        "token_features": features,
        "patch_size": patch,
        "num_classes": classes,
        "nvp": outputs == 2 * features,
    }
    _check_keys(sd, arch)
    return arch


def _expected_shapes(arch: dict) -> dict[str, tuple[int, ...]]:
    """Every key of the reference's state dict of ``arch`` with its shape."""
    wd, d, t = arch["width"], arch["token_features"], arch["num_tokens"]
    hidden = arch["mlp_ratio"] * wd
    out = 2 * d if arch["nvp"] else d
    linear = {
        "attention.qkv": (3 * wd, wd),
        "attention.proj": (wd, wd),
        "mlp.main.0": (hidden, wd),
        "mlp.main.2": (wd, hidden),
    }
    shapes = {"var": (t, d)}
    for k in range(arch["num_blocks"]):
        b = f"blocks.{k}."
        shapes.update({b + "proj_in.weight": (wd, d), b + "proj_in.bias": (wd,)})
        shapes.update({b + "pos_embed": (t, wd), b + "attn_mask": (t, t)})
        shapes.update({b + "proj_out.weight": (out, wd), b + "proj_out.bias": (out,)})
        if arch["num_classes"]:
            shapes[b + "class_embed"] = (arch["num_classes"], 1, wd)
        for layer in range(arch["layers_per_block"]):
            a = f"{b}attn_blocks.{layer}."
            for name, (n_out, n_in) in linear.items():
                shapes.update({a + name + ".weight": (n_out, n_in), a + name + ".bias": (n_out,)})
            for name in _NORMS.values():
                shapes.update({a + name + ".weight": (wd,), a + name + ".bias": (wd,)})
    return shapes


def _check_keys(sd: Mapping, arch: dict) -> None:
    expected = _expected_shapes(arch)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        what = f"no {missing[0]!r}" if missing else f"an unexpected {unexpected[0]!r}"
        raise _not_ml_tarflow(f"{what}; {len(missing)} keys missing, {len(unexpected)} unknown")
    for key, shape in expected.items():
        if tuple(sd[key].shape) != shape:
            raise _not_ml_tarflow(f"{key!r} has shape {tuple(sd[key].shape)}, not {shape}")


def model_config(state_dict: Mapping, image_shape, **model_fields) -> dict:
    """The ``config.model`` dict of the converted TarFlow: the inferred architecture, the
    reference options, ``label_dropout`` (0.1 for a conditional model), ``noise_sigma`` (0)
    and ``model_fields`` (any other TarFlow field: ``num_heads``, ``guidance_schedule``,
    ``backprop``...; one that contradicts the checkpoint is an error)."""
    sd = _as_arrays(state_dict)
    arch = infer_architecture(sd, image_shape)
    fixed = {
        "name": "tarflow",
        "conditional": arch["num_classes"] is not None,
        **{k: arch[k] for k in ("patch_size", "width", "num_blocks", "layers_per_block")},
        "mlp_ratio": arch["mlp_ratio"],
        "nvp": arch["nvp"],
        **REFERENCE_OPTIONS,
    }
    for field, value in model_fields.items():
        if field in fixed and value != fixed[field]:
            raise ConfigError(
                f"model.{field}={value!r} contradicts the checkpoint ({fixed[field]!r}): "
                "leave it out"
            )
    num_heads = model_fields.get("num_heads", arch["width"] // HEAD_CHANNELS or 1)
    return {
        **fixed,
        "num_heads": num_heads,
        "label_dropout": CONDITIONAL_LABEL_DROPOUT if fixed["conditional"] else 0.0,
        "noise_sigma": 0.0,
        **model_fields,
    }


def from_ml_tarflow(state_dict: Mapping, image_shape, *, dtype=None, **model_fields) -> TarFlow:
    """The TarFlow that computes ml-tarflow's ``Model`` of ``state_dict`` (a mapping of its
    ``state_dict()`` names to numpy arrays or torch tensors) on images of ``image_shape =
    (H, W, C)`` (module docstring). ``dtype``: the parameters' dtype (default float32;
    float64 needs ``jax_enable_x64``); ``model_fields``: as ``model_config``."""
    sd = _as_arrays(state_dict)
    config = model_config(sd, image_shape, **model_fields)
    arch = infer_architecture(sd, image_shape)
    shape = _image_shape(image_shape)
    abstract = nnx.eval_shape(
        lambda: build_model(config, shape, arch["num_classes"] or 0, rngs=nnx.Rngs(0))
    )
    values = _our_arrays(sd, arch, shape)
    graphdef, state = nnx.split(abstract)
    flat = list(nnx.to_flat_state(state))
    ours = {path for path, _ in flat}
    if ours != set(values):  # the two layouts disagree: a bug here, not the user's
        raise AssertionError(f"unmapped: {sorted(ours ^ set(values))[:4]}")
    filled = []
    for path, variable in flat:
        value = values.pop(path)  # each stacked copy freed once it is the model's
        if tuple(value.shape) != tuple(variable.shape):
            raise AssertionError(f"{path}: {value.shape} vs {variable.shape}")
        target = dtype or (np.float32 if np.issubdtype(value.dtype, np.floating) else None)
        filled.append((path, variable.replace(jnp.asarray(value, target))))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


def feature_permutation(patch_size: int, channels: int) -> np.ndarray:
    """``perm[f]``: the reference's index of our token feature ``f`` (ours ``(i p + j) C + c``,
    the reference's ``c p^2 + i p + j``)."""
    p = patch_size
    return np.arange(channels * p * p).reshape(channels, p, p).transpose(1, 2, 0).reshape(-1)


def latents_from_reference(tokens, image_shape) -> np.ndarray:
    """The reference's latents (or ``var``, or ``eps``) ``(N, T, C p^2)`` in our layout,
    images ``(N, H, W, C)``."""
    tokens = np.asarray(tokens)
    h, w, c = _image_shape(image_shape)
    patch = math.isqrt(tokens.shape[-1] // c)
    ours = tokens[..., feature_permutation(patch, c)]
    return np.asarray(Patchify((h, w, c), patch).inverse(jnp.asarray(ours)))


def _our_arrays(sd: Mapping, arch: dict, image_shape) -> dict[tuple, np.ndarray]:
    """``{our state path: array}``: the reference's weights in our layout (module docstring)."""
    perm = feature_permutation(arch["patch_size"], image_shape[2])
    d = arch["token_features"]
    net = ("blocks", "steps", "net")

    def stacked(name, transform=lambda value, k: value):
        """``transform(blocks.<k>.<name>, k)`` of every block, stacked on a leading axis."""
        return np.stack([transform(sd[f"blocks.{k}.{name}"], k) for k in range(arch["num_blocks"])])

    out = {
        net + ("proj_in", "kernel"): stacked("proj_in.weight", lambda v, k: v.T[perm]),
        net + ("proj_in", "bias"): stacked("proj_in.bias"),
        # Block k reads its tokens reversed when k is odd, and so do its positions.
        net + ("positions",): stacked("pos_embed", lambda v, k: v[:: -1 if k % 2 else 1]),
    }
    if arch["num_classes"]:
        out[net + ("context_proj", "kernel")] = stacked("class_embed", lambda v, k: v[:, 0])
    for layer in range(arch["layers_per_block"]):
        ours = net + ("blocks", layer)
        for path, name in _LINEARS.items():
            ref = f"attn_blocks.{layer}.{name}."
            out[ours + path + ("kernel",)] = stacked(ref + "weight", lambda v, k: v.T)
            out[ours + path + ("bias",)] = stacked(ref + "bias")
        for path, name in _NORMS.items():
            ref = f"attn_blocks.{layer}.{name}."
            out[ours + path + ("scale",)] = stacked(ref + "weight")
            out[ours + path + ("bias",)] = stacked(ref + "bias")
    # Reference rows: (log-scale, shift) in its feature order; ours (mu, alpha) in ours.
    rows = np.concatenate([d + perm, perm]) if arch["nvp"] else perm
    out[net + ("proj_out", "kernel")] = stacked("proj_out.weight", lambda v, k: v[rows].T)
    out[net + ("proj_out", "bias")] = stacked("proj_out.bias", lambda v, k: v[rows])
    out[("latent_variance",)] = latents_from_reference(sd["var"][None], image_shape)[0]
    if arch["num_classes"]:
        n = arch["num_classes"]
        out[("log_label_prior",)] = np.full((n,), -math.log(n), np.float32)
    return out


def _as_arrays(state_dict) -> dict[str, np.ndarray]:
    if not isinstance(state_dict, Mapping):
        raise _not_ml_tarflow(f"a {type(state_dict).__name__}, not a mapping of names to arrays")
    sd = {str(k): _numpy(v) for k, v in state_dict.items()}
    for prefix in ("module.", "_orig_mod."):  # DistributedDataParallel / torch.compile
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _image_shape(image_shape) -> tuple[int, int, int]:
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(v, int | np.integer) and v > 0 for v in shape):
        raise ConfigError(f"image_shape must be three positive integers (H, W, C), got {shape}")
    return tuple(int(v) for v in shape)


# -- files ------------------------------------------------------------------------------------


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """The state dict in ``path``: a ``.pth`` (PyTorch's ``torch.load``, weights only) or an
    ``.npz`` whose arrays are named by the state dict's keys (or ``state/<key>``)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist (give an ml-tarflow .pth or .npz)")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as e:  # numpy raises several types for a damaged file
            raise CheckpointError(f"checkpoint {path} cannot be read as .npz ({e})") from None
        nested = {k[len("state/") :]: v for k, v in arrays.items() if k.startswith("state/")}
        return nested or arrays
    if ext in (".pth", ".pt"):
        try:
            import torch
        except ImportError:
            raise ConfigError(
                f"reading {path} (a PyTorch checkpoint) needs torch: pip install '.[convert]' "
                "(or save its state dict as .npz)"
            ) from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a damaged or foreign file
            cause = " ".join(str(e).split())[:200]
            raise CheckpointError(
                f"checkpoint {path} cannot be read by torch.load ({cause})"
            ) from None
        if not isinstance(state, Mapping):
            raise _not_ml_tarflow(f"{path} holds a {type(state).__name__}")
        return _as_arrays(state)
    raise CheckpointError(f"checkpoint {path}: expected a .pth or .npz file")


def noise_of_checkpoint_name(path: str) -> float | None:
    """``noise_sigma`` on our unit scale from a checkpoint named by ml-tarflow's trainer
    (``..._0.07.pth``: 0.035; ``..._uniform.pth``: 0), or None for another name."""
    m = _CHECKPOINT_NAME.search(os.path.basename(path))
    if m is None:
        return None
    return 0.0 if m[1] == "uniform" else float(m[1]) / 2


def load_checkpoint(path: str, image_shape, **model_fields) -> tuple[TarFlow, dict]:
    """``(model, config.model dict)`` of the ml-tarflow checkpoint ``path`` (module
    docstring); ``model_fields`` as ``model_config``."""
    noise = noise_of_checkpoint_name(path)
    if noise is not None:
        model_fields.setdefault("noise_sigma", noise)
    state = read_state_dict(path)
    config = model_config(state, image_shape, **model_fields)
    return from_ml_tarflow(state, image_shape, **model_fields), config


__all__ = [
    "from_ml_tarflow",
    "infer_architecture",
    "latents_from_reference",
    "load_checkpoint",
    "model_config",
    "read_state_dict",
]
