"""The products that mix dimensions of the flow's map outside the coupling networks (Glow's 1x1
convolutions, their LU product and inverse; Jet's fixed split projections) are lowered at
``Precision.HIGHEST`` on float32 operands, and the networks' products are not forced to it:
checked on the StableHLO of every family's ``log_prob`` and of its inverse, so a GPU (TF32)
or TPU (bf16 passes) precision regression shows on CPU. With ``compute_dtype='bfloat16'``
the networks' products (TarFlow's and Jet's dense layers and attention products) take bf16
operands and return float32; with float32 no bf16 appears in any product.

Each ``dot_general`` / ``convolution`` is attributed by its source location (the lowered
text's debug info): a product traced from ``flows/nn/`` is a network's, one from
``flows/bijectors/conv1x1.py`` or ``flows/bijectors/jet_coupling.py`` (outside a network) a
mixing product. A product from anywhere else fails the test, so a new mixing product cannot
slip in unchecked.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from flows import Glow, Jet, TarFlow

_LOC_DEF = re.compile(r"^(#loc\d*) = loc\((.*)\)\s*$", re.M)
_OP = re.compile(r"stablehlo\.(dot_general|convolution)\b(.*)\sloc\((.*)\)\s*$")
_FILE = re.compile(r'"([^"]+\.py)":\d+')
_REF = re.compile(r"#loc\d*")
SQUARE = re.compile(r"tensor<(\d+)x(\d+)xf32>")  # a 2-D float32 type (square: a == b)
# A product's type: (operand, operand) -> result, each "tensor<AxBx...xDTYPE>".
_TENSOR = r"tensor<(?:[\dx]*x)?(\w+)>"
_TYPES = re.compile(rf"\({_TENSOR}, {_TENSOR}\) -> {_TENSOR}")
MIXING_FILES = ("flows/bijectors/conv1x1.py", "flows/bijectors/jet_coupling.py")

IMAGE = (4, 4, 1)  # channels per level: 4, then 8 (and LU blocks of 4, 2)
HIDDEN = 6  # the networks' width: no channel count of the flow


def _files(loc: str, defs: dict[str, str], seen=None) -> set[str]:
    """Every source file named in a location, following ``#locN`` aliases and callsites."""
    seen = set() if seen is None else seen
    files = set(_FILE.findall(loc))
    for ref in _REF.findall(loc):
        if ref not in seen and ref in defs:
            seen.add(ref)
            files |= _files(defs[ref], defs, seen)
    return files


def products(text: str) -> list[tuple[str, str, bool, set[str]]]:
    """``(op, operands, is_highest, source files)`` of every product in StableHLO text."""
    defs = dict(_LOC_DEF.findall(text))
    found = []
    for line in text.splitlines():
        m = _OP.search(line)
        if m:
            op, rest, loc = m.groups()
            found.append((op, rest, "HIGHEST" in rest, _files(loc, defs)))
    return found


def _classify(text):
    mixing, nets = [], []
    for op, rest, highest, files in products(text):
        if any("flows/nn/" in f for f in files):  # a network's (called from a bijector)
            nets.append((op, rest, highest))
        elif any(f.endswith(MIXING_FILES) for f in files):
            mixing.append((op, rest, highest))
        else:
            raise AssertionError(f"a {op} from neither a mixing bijector nor a network: {files}")
    return mixing, nets


def dtypes(rest: str) -> tuple[str, str, str]:
    """``(lhs, rhs, result)`` element types of a product's lowered text."""
    m = _TYPES.search(rest)
    assert m, rest
    return m.groups()


def lowered_text(model, direction):
    """StableHLO text (with source locations) of the model's ``log_prob`` ('forward') or
    ``inverse`` on a batch of 2, for checking the precision of its products."""
    graphdef, state = nnx.split(model)
    if direction == "forward":
        x = jnp.full((2, *model.image_shape), 0.3)

        def fn(state, x):
            return nnx.merge(graphdef, state).log_prob(x)
    else:
        x = model.sample_latents(jax.random.key(0), 2)

        def fn(state, x):
            return nnx.merge(graphdef, state).inverse(x)

    return jax.jit(fn).lower(state, x).as_text(debug_info=True)


@pytest.mark.parametrize("permutation,conv_impl", [("conv1x1_lu", "gemm"), ("conv1x1", "lax")])
def test_mixing_products_are_highest_and_network_products_are_not(permutation, conv_impl):
    model = Glow(
        IMAGE,
        num_levels=2,
        num_steps=1,
        hidden_channels=HIDDEN,
        permutation=permutation,
        conv_impl=conv_impl,
        rngs=nnx.Rngs(0),
    )
    for direction in ("forward", "inverse"):
        mixing, nets = _classify(lowered_text(model, direction))
        assert mixing and nets, (direction, len(mixing), len(nets))
        assert all(highest for *_, highest in mixing), (direction, mixing)
        assert not any(highest for *_, highest in nets), (direction, nets)
        # The mixing products are the ones expected: W (or W^{-1}) applied at every
        # position, a C x C operand for both levels' channel counts.
        squares = {int(a) for op, rest, _ in mixing for a, b in SQUARE.findall(rest) if a == b}
        assert {4, 8} <= squares, (direction, squares)
        if conv_impl == "lax":
            assert any(op == "convolution" for op, *_ in nets)
        else:
            assert all(op == "dot_general" for op, *_ in nets)


def _transformer_model(family, matmul_impl, compute_dtype):
    if family == "tarflow":  # 4 tokens of 4 features, width 6
        return TarFlow(
            IMAGE,
            patch_size=2,
            width=HIDDEN,
            num_blocks=2,
            layers_per_block=1,
            num_heads=2,
            matmul_impl=matmul_impl,
            compute_dtype=compute_dtype,
            rngs=nnx.Rngs(0),
        )
    return Jet(
        IMAGE,
        patch_size=2,
        num_couplings=2,
        block_depth=1,
        width=HIDDEN,
        num_heads=2,
        coupling_pattern="channels,spatial",
        compute_dtype=compute_dtype,
        rngs=nnx.Rngs(0),
    )


def gradient_text(model):
    """StableHLO text of the gradient of the mean ``log_prob`` w.r.t. the parameters."""
    graphdef, state = nnx.split(model)
    x = jnp.full((2, *model.image_shape), 0.3)

    def loss(state):
        return jnp.mean(nnx.merge(graphdef, state).log_prob(x))

    return jax.jit(jax.grad(loss)).lower(state).as_text(debug_info=True)


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "family,matmul_impl", [("tarflow", "gemm"), ("tarflow", "lax"), ("jet", "lax")]
)
def test_transformer_families_products(family, matmul_impl, compute_dtype):
    """TarFlow has no product outside its networks; Jet's projections are HIGHEST float32.
    The networks' products: float32 throughout, or every forward product (dense layers,
    both attention products, in ``log_prob`` and in the token-by-token inverse) from bf16
    operands into float32. In the gradient, the dense layers' input-gradient products of
    the ``'gemm'`` VJP are bf16 too (its weight gradients are float32, from the widened
    residual, as are autodiff's transposes of a mixed product)."""
    model = _transformer_model(family, matmul_impl, compute_dtype)
    assert model.compute_dtype == compute_dtype
    texts = {d: lowered_text(model, d) for d in ("forward", "inverse")}
    texts["gradient"] = gradient_text(model)
    for direction, text in texts.items():
        mixing, nets = _classify(text)
        assert nets, direction
        if family == "tarflow":
            assert not mixing, (direction, mixing)
        else:  # x P and its transposes (autodiff's too) at HIGHEST, on float32
            assert mixing, direction
            assert all(highest for *_, highest in mixing), (direction, mixing)
            assert all(dtypes(rest) == ("f32",) * 3 for _, rest, _ in mixing), mixing
        assert not any(highest for *_, highest in nets), (direction, nets)
        types = [dtypes(rest) for _, rest, _ in nets]
        assert all(t[2] == "f32" for t in types), (direction, types)  # f32 sums
        if compute_dtype == "float32":
            assert all(t == ("f32",) * 3 for t in types), (direction, types)
            continue
        mixed = [t for t in types if t == ("bf16", "bf16", "f32")]
        assert all(t in (("bf16", "bf16", "f32"), ("f32",) * 3) for t in types), types
        if direction != "gradient":
            assert len(mixed) == len(types), (direction, types)
        elif matmul_impl == "gemm":  # the forward pass's and the input gradients'
            forward = len(_classify(texts["forward"])[1])
            assert len(mixed) > forward, (len(mixed), forward)
