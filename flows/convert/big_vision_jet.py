"""big_vision's Jet (``big_vision/models/proj/jet/jet.py``, flax linen) as our ``Jet``.

``from_big_vision_jet(params, image_shape, **model_kwargs)`` takes the parameter tree of the
reference ``Model`` (nested dicts of arrays) and that ``Model``'s constructor arguments and
returns a ``Jet`` that computes the same function:

    ours:  x in [0, 1)^D  ->  2x - 1  ->  patches  ->  couplings  ->  tokens z (T, d)
    ref:   x' = 2x - 1    ->  patches  ->  couplings  ->  z in its image layout (H, W, C)

    log p_ours(x) = log N(z; 0, I) + log_det_ref(2x - 1) + D log 2

(the density of x on the unit scale is the reference's density of ``x' = 2x - 1`` times the
Jacobian ``2^D``), and ``2 model.inverse(z) - 1`` is the reference's ``inverse(z)``.
Latents differ only in layout: the reference returns its tokens un-patchified, ours stay
tokens (``latents_from_big_vision`` / ``latents_to_big_vision``).

Bits/dim: big_vision's trainer feeds ``v / 127.5 - 1 + u / 127.5`` for 8-bit values v and
reports ``(-log p' + D log 127.5) / (D log 2)``. With ``input_scale=512/255`` (our field,
``flows.models.jet``) the converted model maps our ``(v + u) / 256`` onto exactly those
inputs and our ``bits_per_dim(log_prob, D, 256)`` is that number; with the default 2 it sees
``2 (v + u) / 256 - 1``, up to one level below what the reference was trained on.
``jet_fields(**model_kwargs)`` gives our Jet's fields for the reference's constructor
arguments without parameters (to train our Jet at its architecture).

The architecture is read off the parameters (couplings = the leading axis, width, heads,
block depth, MLP size, patch size from the projections' sizes and ``image_shape``, which
coupling is which kind from which projection is non-zero); the keyword arguments, the
reference's names (``depth``, ``block_depth``, ``emb_dim``, ``num_heads``, ``ps``,
``kinds``, ``scale_factor``, ``channels_coupling_projs``, ``spatial_coupling_projs``), must
agree with them where given, and ``scale_factor`` (2 unless given) is the one the parameters
cannot tell. The reference's options map to ours as

    depth -> num_couplings,  emb_dim -> width,  ps -> patch_size,  kinds -> coupling_pattern,
    spatial_coupling_projs -> spatial_splits,  channels_coupling_projs ('random') -> channel_split,
    plus spatial_cut=True and qkv_init='separate' (``flows.models.jet``'s docstring).

The frozen projections (``*FREEZE_ME``) become the couplings' buffers, so the converted
model uses the checkpoint's own permutations, whatever its split names. Parameter by
parameter (coupling i of the reference's scan is our coupling i: group ``i // period``,
position ``i % period``, or the tail):

    init_proj -> net.proj_in         posemb[0] -> net.positions     final_proj -> net.proj_out
    encoderblock_l/LayerNorm_0, _1 -> blocks[l].norm1, norm2         encoder_norm -> net.norm
    MultiHeadDotProductAttention_0/query, key, value (width, heads, head_dim), side by side
        -> blocks[l].attn.qkv;  .../out (heads, head_dim, width) -> blocks[l].attn.out
    MlpBlock_0/Dense_0, Dense_1 -> blocks[l].fc1, fc2

Arrays keep float64 when x64 is on (and they are float64); others become float32.
Conditional reference models (a cross-attention on a context sequence inside every coupling
network) have no counterpart here and are refused, as is a non-square image (the
reference's un-patchify assumes one).

``load_checkpoint(path, image_shape, **model_kwargs)`` reads a big_vision checkpoint: an
``.npz`` of parameters flattened with ``/`` (``params/...``, ``opt/target/...`` or the
parameters alone, as ``big_vision.utils.load_params`` reads them), or the tensorstore
directory its trainer writes (``checkpoint.bv-000001000``, or the path ``checkpoint.bv``
whose ``checkpoint.bv-LAST`` names the latest). Bad input raises ``ConfigError``.
"""

from __future__ import annotations

import ast
import math
import os
import re
import zipfile
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flows.errors import ConfigError
from flows.models.jet import Jet, parse_names

# The reference Model's constructor arguments and their defaults.
REFERENCE_DEFAULTS = {
    "depth": 2,
    "block_depth": 1,
    "emb_dim": 256,
    "num_heads": 4,
    "scale_factor": 2.0,
    "ps": 4,
    "channels_coupling_projs": ("random",),
    "spatial_coupling_projs": ("checkerboard", "checkerboard-inv"),
    "kinds": ("channels", "channels", "spatial"),
}
CHANNEL_MASKS = "channel_coupling_masks-FREEZE_ME"
SPATIAL_MASKS = "spatial_coupling_masks-FREEZE_ME"


# -- the public API ---------------------------------------------------------------------------
def from_big_vision_jet(params, image_shape, *, input_scale=2.0, **model_kwargs) -> Jet:
    """Our Jet computing big_vision's jet ``Model(**model_kwargs)`` with ``params`` on images
    of ``image_shape = (H, W, C)`` (module docstring). ``input_scale`` is ours, not the
    reference Model's (``Jet``'s field): 2 is the change of variables above; 512/255 feeds
    the model what big_vision's input pipeline made of 8-bit images, and gives its bits/dim."""
    return _convert(params, image_shape, model_kwargs, input_scale)[0]


def load_checkpoint(path: str, image_shape, *, input_scale=2.0, **model_kwargs):
    """``(model, config_model)`` from a big_vision Jet checkpoint file: the converted model
    and the ``config.model`` fields (name and every Jet field) that rebuild its architecture
    (its projections are buffers of the model, so a checkpoint of it keeps them)."""
    return _convert(read_params(path), image_shape, model_kwargs, input_scale)


def jet_fields(**model_kwargs) -> dict:
    """Our Jet's fields (``config.model``'s, without name) for big_vision's jet
    ``Model(**model_kwargs)``, the reference's defaults where not given: the same
    architecture and parameter count, less the reference's frozen projections (it keeps a
    d x d and a T x T matrix per coupling as parameters; ours are buffers, one per coupling)."""
    args = {**REFERENCE_DEFAULTS, **_check_names(model_kwargs)}
    channel_projs = _sequence(args["channels_coupling_projs"], "channels_coupling_projs")
    if set(channel_projs) != {"random"}:
        raise ConfigError(f"channels_coupling_projs must be 'random', got {channel_projs}")
    return {
        "patch_size": _int(args["ps"], "ps"),
        "num_couplings": _int(args["depth"], "depth"),
        "block_depth": _int(args["block_depth"], "block_depth"),
        "width": _int(args["emb_dim"], "emb_dim"),
        "num_heads": _int(args["num_heads"], "num_heads"),
        "mlp_ratio": 4,  # the reference's ViT blocks: MLP of 4 x width
        "coupling_pattern": ",".join(_sequence(args["kinds"], "kinds")),
        "spatial_splits": ",".join(
            _sequence(args["spatial_coupling_projs"], "spatial_coupling_projs")
        ),
        "channel_split": "random",
        "scale_factor": _float(args["scale_factor"], "scale_factor"),
        "projection_seed": 0,
        "spatial_cut": True,
        "qkv_init": "separate",
        "input_scale": 2.0,
    }


def latents_from_big_vision(model: Jet, latents) -> jax.Array:
    """The reference's latents (B, H, W, C) as ours (B, T, d)."""
    return model.patchify.forward_and_log_det(jnp.asarray(latents))[0]


def latents_to_big_vision(model: Jet, latents) -> jax.Array:
    """Our latents (B, T, d) in the reference's layout (B, H, W, C)."""
    return model.patchify.inverse_and_log_det(jnp.asarray(latents))[0]


# -- reading a checkpoint ---------------------------------------------------------------------
def read_params(path: str) -> dict:
    """The parameter tree of a big_vision checkpoint (module docstring)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        flat = _read_npz(path)
    elif os.path.isdir(path) or os.path.isfile(f"{path}-LAST"):
        flat = _read_tensorstore(path)
    else:
        raise ConfigError(f"no big_vision checkpoint at {path!r}")
    tree = _unflatten(flat)
    for prefix in (("params",), ("opt", "target")):
        node = tree
        for key in prefix:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            return node
    return tree


def _read_npz(path: str) -> dict:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):
            raise ConfigError(f"{path!r} is a single array, not a big_vision checkpoint")
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ConfigError(f"{path!r} is not a big_vision .npz checkpoint: {e}") from None


def _read_tensorstore(path: str) -> dict:
    """The ``params~...`` arrays of a checkpoint directory written by big_vision's
    ``save_checkpoint_ts`` (one zarr array per leaf, ``~`` for ``/``)."""
    if not os.path.isdir(path):
        with open(f"{path}-LAST") as f:
            path = f"{path}-{f.read().strip()}"
    if not os.path.isdir(path):
        raise ConfigError(f"no big_vision checkpoint directory at {path!r}")
    try:
        import tensorstore as ts
    except ImportError:
        raise ConfigError(
            "reading a tensorstore checkpoint needs the tensorstore package (pip install "
            "tensorstore), or convert it to .npz with big_vision's utils.load_params"
        ) from None
    flat = {}
    for name in sorted(os.listdir(path)):
        if not name.startswith("params~"):
            continue
        where = os.path.join(path, name)
        driver = "zarr3" if os.path.exists(os.path.join(where, "zarr.json")) else "zarr"
        spec = {"driver": driver, "kvstore": {"driver": "file", "path": where}}
        try:
            flat[name.replace("~", "/")] = np.asarray(ts.open(spec).result().read().result())
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"cannot read the array {where!r}: {e}") from None
    if not flat:
        raise ConfigError(f"{path!r} holds no params~ arrays: not a big_vision checkpoint")
    return flat


def _unflatten(flat: Mapping) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"checkpoint name {name!r} nests under an array")
        node[leaf] = value
    return tree


# -- the architecture, read off the parameters ------------------------------------------------
def _array(a) -> np.ndarray:
    """A checkpoint leaf as float64 (x64 on and float64 given) or float32."""
    a = np.asarray(a)
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:  # numpy's .npz of bfloat16
        a = a.view(jnp.bfloat16)
    if a.dtype == np.float64 and jax.config.jax_enable_x64:
        return a
    return a.astype(np.float32)


def _get(tree, path: str):
    node = tree
    for key in path.split("/"):
        if not isinstance(node, Mapping) or key not in node:
            raise ConfigError(f"not a big_vision Jet: its parameters have no {path!r}")
        node = node[key]
    if isinstance(node, Mapping):
        raise ConfigError(f"not a big_vision Jet: {path!r} is not an array")
    return _array(node)


def _int(value, name: str) -> int:
    """A positive int, or its text (a CLI's ``key=value``)."""
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.isdigit():
        text = int(text)
    if isinstance(text, bool) or not isinstance(text, int | np.integer) or text < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(text)


def _float(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or not number > 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return number


def _sequence(value, name: str) -> tuple[str, ...]:
    """A sequence of names, or its text: ``a,b``, ``(a, b)`` or ``['a', 'b']``."""
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "([":
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise ConfigError(f"{name}: cannot read {value!r} as a sequence") from None
            if isinstance(value, str):
                value = (value,)
    try:
        return parse_names(value, name)
    except TypeError:
        raise ConfigError(f"{name} must be a sequence of names, got {value!r}") from None


def _permutation_kinds(c_masks, s_masks) -> list[str]:
    """Each coupling's kind from which of its two projections is a permutation matrix (the
    other is the reference's all-zero placeholder)."""
    kinds = []
    for i, (c, s) in enumerate(zip(c_masks, s_masks, strict=True)):
        found = [k for k, m in (("channels", c), ("spatial", s)) if np.any(m)]
        if len(found) != 1:
            raise ConfigError(
                f"coupling {i} has {len(found)} non-zero projections (expected one): "
                "not a big_vision Jet"
            )
        m = c if found[0] == "channels" else s
        ones = m == 1
        if not (np.all(ones | (m == 0)) and np.all(ones.sum(0) == 1) and np.all(ones.sum(1) == 1)):
            raise ConfigError(f"coupling {i}'s {found[0]} projection is not a permutation matrix")
        kinds.append(found[0])
    return kinds


def _shortest_period(seq: list[str]) -> tuple[str, ...]:
    for p in range(1, len(seq) + 1):
        if all(seq[i] == seq[i % p] for i in range(len(seq))):
            return tuple(seq[:p])
    return tuple(seq)


def _check_names(kwargs: Mapping) -> Mapping:
    unknown = sorted(set(kwargs) - set(REFERENCE_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown big_vision Jet argument {unknown[0]!r}; its Model takes "
            f"{', '.join(REFERENCE_DEFAULTS)}"
        )
    return kwargs


def _architecture(params, image_shape, kwargs) -> tuple[dict, list[str]]:
    """Our Jet's fields for the reference parameters, and each coupling's kind."""
    _check_names(kwargs)
    try:
        h, w, c = (int(v) for v in image_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"image_shape must be (H, W, C), got {image_shape!r}") from None
    if min(h, w, c) < 1:
        raise ConfigError(f"image_shape must be positive, got {image_shape!r}")
    if h != w:
        raise ConfigError(f"big_vision's Jet takes square images, got {h}x{w}")
    if not isinstance(params, Mapping):
        raise ConfigError(f"params must be a nested mapping of arrays, got {type(params)}")
    if "couplings" not in params and CHANNEL_MASKS not in params:
        raise ConfigError(
            "not a big_vision Jet: its parameters have no 'couplings' and no "
            f"{CHANNEL_MASKS!r} (top level: {sorted(params)[:5]})"
        )
    c_masks, s_masks = _get(params, CHANNEL_MASKS), _get(params, SPATIAL_MASKS)
    dnn = params["couplings"].get("dnn") if isinstance(params.get("couplings"), Mapping) else None
    if not isinstance(dnn, Mapping):
        raise ConfigError("not a big_vision Jet: its parameters have no 'couplings/dnn'")
    if "MultiHeadDotProductAttention_0" in dnn:
        raise ConfigError(
            "this big_vision Jet is conditional (a cross-attention on a context in every "
            "coupling); only unconditional ones convert"
        )
    posemb = _get(params, "couplings/dnn/posemb")
    if c_masks.ndim != 3 or s_masks.ndim != 3 or posemb.ndim != 4:
        raise ConfigError("not a big_vision Jet: its projections are not stacked matrices")
    depth, features, tokens = len(c_masks), c_masks.shape[-1], s_masks.shape[-1]
    width = posemb.shape[-1]
    block0 = "couplings/dnn/vit/encoderblock_0"
    query = _get(params, f"{block0}/MultiHeadDotProductAttention_0/query/kernel")
    mlp = _get(params, f"{block0}/MlpBlock_0/Dense_0/kernel")
    blocks = [k for k in dnn["vit"] if re.fullmatch(r"encoderblock_\d+", k)]
    if sorted(blocks) != sorted(f"encoderblock_{b}" for b in range(len(blocks))):
        raise ConfigError(f"not a big_vision Jet: its ViT has blocks {sorted(blocks)}")
    if query.ndim != 4 or mlp.ndim != 3:
        raise ConfigError("not a big_vision Jet: unexpected attention or MLP kernel shapes")
    patch = math.isqrt(features // c)
    if patch * patch * c != features:
        raise ConfigError(
            f"the parameters' {features} features per token are not p*p*{c} for any patch "
            f"size p: they do not fit an image of {c} channels"
        )
    if h % patch:
        raise ConfigError(f"patch size {patch} does not divide the image size {h}x{w}")
    if (h // patch) * (w // patch) != tokens or posemb.shape[-2] != tokens:
        raise ConfigError(
            f"the parameters have {tokens} tokens of patch {patch}, an image of "
            f"{h}x{w}x{c} has {(h // patch) * (w // patch)}: they were made for another shape"
        )
    inferred = {
        "depth": depth,
        "block_depth": len(blocks),
        "emb_dim": width,
        "num_heads": query.shape[-2],
        "ps": patch,
    }
    for name, value in inferred.items():
        if name in kwargs and _int(kwargs[name], name) != value:
            raise ConfigError(f"{name}={kwargs[name]!r} but the parameters have {name}={value}")
    if mlp.shape[-1] != 4 * width:
        raise ConfigError(f"not a big_vision Jet: MLP size {mlp.shape[-1]}, width {width}")
    kinds = _permutation_kinds(c_masks, s_masks)
    if "kinds" in kwargs:
        pattern = _sequence(kwargs["kinds"], "kinds")
        cycled = [pattern[i % len(pattern)] for i in range(depth)]
        if cycled != kinds:
            i = next(i for i, (a, b) in enumerate(zip(cycled, kinds, strict=True)) if a != b)
            raise ConfigError(
                f"kinds={kwargs['kinds']!r} makes coupling {i} {cycled[i]}, but the "
                f"parameters' projections make it {kinds[i]}"
            )
    else:
        pattern = _shortest_period(kinds)
    fields = jet_fields(**{**kwargs, **inferred, "kinds": pattern})
    return fields, kinds


# -- the parameters, coupling by coupling -----------------------------------------------------
def _merge_heads(a, axis: int):
    """Merges axes ``axis`` and ``axis + 1`` (heads, head_dim) of ``a``."""
    shape = a.shape
    axis %= a.ndim
    return a.reshape(*shape[:axis], shape[axis] * shape[axis + 1], *shape[axis + 2 :])


def _net_arrays(dnn, index, block_depth: int) -> dict[str, np.ndarray]:
    """Our Transformer's arrays (paths under ``net``) for the reference couplings
    ``index`` (an int, or a list: stacked on a leading axis)."""

    def take(path):
        node = dnn
        for key in path.split("/"):
            node = node[key]
        return _array(node)[index]

    out = {
        "proj_in.kernel": take("init_proj/kernel"),
        "proj_in.bias": take("init_proj/bias"),
        "positions": take("posemb")[..., 0, :, :],
        "norm.scale": take("vit/encoder_norm/scale"),
        "norm.bias": take("vit/encoder_norm/bias"),
        "proj_out.kernel": take("final_proj/kernel"),
        "proj_out.bias": take("final_proj/bias"),
    }
    for b in range(block_depth):
        block = f"vit/encoderblock_{b}"
        attn = f"{block}/MultiHeadDotProductAttention_0"
        qkv = ("query", "key", "value")
        out |= {
            f"blocks.{b}.norm1.scale": take(f"{block}/LayerNorm_0/scale"),
            f"blocks.{b}.norm1.bias": take(f"{block}/LayerNorm_0/bias"),
            f"blocks.{b}.norm2.scale": take(f"{block}/LayerNorm_1/scale"),
            f"blocks.{b}.norm2.bias": take(f"{block}/LayerNorm_1/bias"),
            f"blocks.{b}.attn.qkv.kernel": np.concatenate(
                [_merge_heads(take(f"{attn}/{n}/kernel"), -2) for n in qkv], axis=-1
            ),
            f"blocks.{b}.attn.qkv.bias": np.concatenate(
                [_merge_heads(take(f"{attn}/{n}/bias"), -2) for n in qkv], axis=-1
            ),
            f"blocks.{b}.attn.out.kernel": _merge_heads(take(f"{attn}/out/kernel"), -3),
            f"blocks.{b}.attn.out.bias": take(f"{attn}/out/bias"),
            f"blocks.{b}.fc1.kernel": take(f"{block}/MlpBlock_0/Dense_0/kernel"),
            f"blocks.{b}.fc1.bias": take(f"{block}/MlpBlock_0/Dense_0/bias"),
            f"blocks.{b}.fc2.kernel": take(f"{block}/MlpBlock_0/Dense_1/kernel"),
            f"blocks.{b}.fc2.bias": take(f"{block}/MlpBlock_0/Dense_1/bias"),
        }
    return out


def _assign(module, path: str, value) -> None:
    node = module
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[int(key)] if key.isdigit() else getattr(node, key)
    variable = getattr(node, leaf)
    expected = variable.get_value().shape
    if tuple(value.shape) != tuple(expected):
        raise ConfigError(
            f"the parameter for {path} has shape {tuple(value.shape)}, this Jet's is "
            f"{tuple(expected)}: not the architecture the arguments describe"
        )
    variable.set_value(jnp.asarray(value))


def _assign_couplings(target, params, index, kinds, block_depth: int) -> None:
    """Fills one Jet coupling (or a stack of them) from the reference couplings ``index``."""
    dnn = params["couplings"]["dnn"]
    for path, value in _net_arrays(dnn, index, block_depth).items():
        _assign(target.net, path, value)
    masks = CHANNEL_MASKS if kinds == "channels" else SPATIAL_MASKS
    _assign(target, "projection", _array(params[masks])[index])


def _convert(params, image_shape, kwargs, input_scale) -> tuple[Jet, dict]:
    if isinstance(params, Mapping) and "params" in params and "couplings" not in params:
        params = params["params"]
    fields, kinds = _architecture(params, image_shape, kwargs)
    fields["input_scale"] = _float(input_scale, "input_scale")
    shape = tuple(int(v) for v in image_shape)
    # Abstract first: every array is then the checkpoint's (checked below), none random.
    model = nnx.eval_shape(lambda: Jet(shape, **fields, rngs=nnx.Rngs(0)))
    period = len(model.pattern)
    groups = model.num_groups
    for j in range(period if groups else 0):
        index = [g * period + j for g in range(groups)]
        coupling = model.groups.couplings[j]
        _assign_couplings(coupling, params, index, kinds[j], fields["block_depth"])
    if model.tail is not None:
        for t, coupling in enumerate(model.tail.couplings):
            i = groups * period + t
            _assign_couplings(coupling, params, i, kinds[i], fields["block_depth"])
    missing = [
        "/".join(map(str, p))
        for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model))
        if isinstance(v, jax.ShapeDtypeStruct)
    ]
    if missing:
        raise AssertionError(f"arrays the conversion did not set: {missing[:5]}")
    return model, {"name": "jet", "conditional": False, **fields}
