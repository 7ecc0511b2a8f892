"""The products that mix dimensions of the flow's map outside the coupling networks (the 1x1
convolutions, their LU product and inverse) are lowered at ``Precision.HIGHEST``, and the
networks' products are not forced to it: checked on the StableHLO of a Glow's ``log_prob``
and of its inverse, so a GPU (TF32) or TPU (bf16 passes) precision regression shows on CPU.

Each ``dot_general`` / ``convolution`` is attributed by its source location (the lowered
text's debug info): a product traced from ``flows/bijectors/conv1x1.py`` is a mixing product,
one from ``flows/nn/`` a network's. A product from anywhere else fails the test, so a new
mixing product cannot slip in unchecked.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from flows import Glow

_LOC_DEF = re.compile(r"^(#loc\d*) = loc\((.*)\)\s*$", re.M)
_OP = re.compile(r"stablehlo\.(dot_general|convolution)\b(.*)\sloc\((.*)\)\s*$")
_FILE = re.compile(r'"([^"]+\.py)":\d+')
_REF = re.compile(r"#loc\d*")
SQUARE = re.compile(r"tensor<(\d+)x(\d+)xf32>")  # a 2-D float32 type (square: a == b)

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
        if any(f.endswith("flows/bijectors/conv1x1.py") for f in files):
            mixing.append((op, rest, highest))
        elif any("flows/nn/" in f for f in files):
            nets.append((op, rest, highest))
        else:
            raise AssertionError(f"a {op} from neither the 1x1 convs nor a network: {files}")
    return mixing, nets


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
