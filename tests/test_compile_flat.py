"""The compiled training program does not grow with depth K (no timing: instruction counts).

The K identical steps of a level are stacked and run with ``lax.scan`` (``StepStack``), so the
program JAX hands to XLA, and the one XLA compiles, are the same size for every K; compile
time follows. Also checked: every convolution XLA:CPU is left with uses the NHWC/HWIO layout
its fast kernel takes (``flows.nn.conv`` writes them as matrix products, so there are none).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from flows.models.glow import Glow

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?[\w.-]+ = ", re.M)
_DOT_OR_CONV = re.compile(r" (?:dot|convolution)\(")
_CONV_LAYOUT = re.compile(r" convolution\(.*?dim_labels=([\w>_-]+)")


def _programs(backprop, num_steps):
    abstract = nnx.eval_shape(
        lambda: Glow(
            (8, 8, 1),
            num_levels=1,
            num_steps=num_steps,
            hidden_channels=8,
            backprop=backprop,
            rngs=nnx.Rngs(0),
        )
    )
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)

    def loss(params, rest, x):
        return -jnp.mean(nnx.merge(graphdef, params, rest).log_prob(x))

    lowered = jax.jit(jax.grad(loss)).lower(params, rest, x)
    return lowered.as_text(), lowered.compile().as_text()


def _size(text):
    return len(_INSTRUCTION.findall(text)), len(_DOT_OR_CONV.findall(text))


@pytest.mark.parametrize("backprop", ["autodiff", "invertible"])
def test_training_program_size_does_not_grow_with_depth(backprop):
    lowered_2, compiled_2 = _programs(backprop, 2)
    lowered_6, compiled_6 = _programs(backprop, 6)
    assert _size(lowered_2) == _size(lowered_6)
    assert _size(compiled_2) == _size(compiled_6)
    assert _size(compiled_2)[1] > 0
    assert set(_CONV_LAYOUT.findall(compiled_6)) <= {"b01f_01io->b01f"}
