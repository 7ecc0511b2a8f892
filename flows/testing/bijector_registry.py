"""One registry of every bijector and every whole model (a ``DensityModel`` is a bijection of
images on the unit scale onto a pytree of latents), each in a few configurations, including
conditioned ones.

Generic tests (``tests/test_bijectors.py``) run on every entry: round trip, log-det against
the autodiff Jacobian, log-det of the inverse, jit against no-jit; ``bench.device_check`` runs
the float32 ones on an accelerator. A new layer is tested by adding it here. Each entry builds
a *fresh* layer from ``nnx.Rngs``; ``build`` then perturbs every parameter (so
zero-initialised layers are not the identity) and runs data-dependent init.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flows import bijectors as B
from flows.bijectors.dequantizer import VariationalDequantizer
from flows.bijectors.jet_coupling import JetCoupling, channel_projection, spatial_projection
from flows.bijectors.spline import RationalQuadraticSpline, spline_coupling
from flows.bijectors.vector import mlp_coupling
from flows.models.glow import Glow, GlowLevel
from flows.models.jacobi import Sampler
from flows.models.jet import Jet
from flows.models.steps import StepStack, glow_step
from flows.models.tarflow import TarFlow, TarFlowBlock


class GuidedModel(B.Bijector):
    """A model's guided map at weight ``guidance`` as a bijector, images -> latents: forward
    ``model.guided_forward_and_log_det`` (whose log-det gives ``guided_log_prob``), inverse
    the guided sampler, ``model.inverse_with_sampler`` with ``sampler`` (None: the family's
    plain guided inverse), so the generic tests check the guided density's log-det against
    the autodiff Jacobian and that the sampler inverts it."""

    def __init__(self, model, guidance: float, sampler: Sampler | None = None):
        self.model = model
        self.guidance = float(guidance)
        self.sampler = sampler

    def forward_and_log_det(self, x, *, context=None):
        return self.model.guided_forward_and_log_det(x, context=context, guidance=self.guidance)

    def inverse_and_log_det(self, z, *, context=None):
        x, log_det, _ = self.model.inverse_with_sampler(
            z, context=context, guidance=self.guidance, sampler=self.sampler
        )
        return x, log_det

    def initialize(self, x, *, context=None):
        self.model.initialize(x, context=context)
        return self.forward(x, context=context)


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    make: Callable[[nnx.Rngs], B.Bijector]
    event_shape: tuple[int, ...]
    context_features: int | tuple[int, ...] | None = None  # a tuple: a feature map's shape
    domain: str = "real"  # 'real': x ~ N(0, 1); 'unit': x ~ U(0, 1)
    # Tolerance (relative and absolute) of the float64 log-det against the autodiff
    # Jacobian. BF16_JACOBIAN_RTOL for networks with bf16 products: autodiff rounds each
    # Jacobian row's cotangent to bf16 where it enters a product (a nonlinear function of the
    # row's seed), so the rows are not exactly those of one matrix; with that rounding
    # differentiated as the identity instead, the same entries agree to 1e-14. The round trip
    # in float64 (at 1e-9) stays exact, and the float32 entries test the log-det code at 1e-7.
    jacobian_rtol: float = 1e-7


def _level(context=None, is_top=False, coupling="affine", permutation="conv1x1_lu", **spline):
    return lambda r: GlowLevel(
        2,
        2,
        8,
        coupling=coupling,
        permutation=permutation,
        is_top=is_top,
        coupling_context=context,
        prior_context=context,
        backprop="autodiff",
        rngs=r,
        **spline,
    )


# Jet's coupling networks and a tiny whole Jet.
_JET_NET = {"width": 8, "depth": 1, "num_heads": 2}
BF16_JACOBIAN_RTOL = 2e-3  # measured: 1e-4 to 4e-4 on the bf16 entries below

_JET_MODEL = {
    "patch_size": 2,
    "num_couplings": 3,
    "block_depth": 1,
    "width": 8,
    "num_heads": 2,
    "coupling_pattern": "channels,spatial",
    "spatial_splits": "checkerboard,hstripes",
}


# A conditional TarFlow with an odd number of blocks.
_TARFLOW_COND = {
    "patch_size": 2,
    "width": 8,
    "num_blocks": 3,
    "layers_per_block": 1,
    "num_heads": 2,
    "num_classes": 3,
}


REGISTRY: list[Entry] = [
    Entry("actnorm_image", lambda r: B.ActNorm(3), (4, 4, 3)),
    Entry("actnorm_vector", lambda r: B.ActNorm(5), (5,)),
    Entry("conv1x1_image", lambda r: B.Conv1x1(4, rngs=r), (3, 3, 4)),
    Entry("conv1x1_vector", lambda r: B.Conv1x1(3, rngs=r), (3,)),
    Entry("conv1x1_lu_image", lambda r: B.Conv1x1LU(4, rngs=r), (3, 3, 4)),
    Entry("conv1x1_lu_vector", lambda r: B.Conv1x1LU(5, rngs=r), (5,)),
    Entry("reverse", lambda r: B.Reverse(5), (2, 2, 5)),
    Entry("shuffle", lambda r: B.Shuffle(6, rngs=r), (2, 2, 6)),
    Entry("additive_coupling", lambda r: B.conv_coupling("additive", 4, 8, rngs=r), (4, 4, 4)),
    Entry("affine_coupling", lambda r: B.conv_coupling("affine", 4, 8, rngs=r), (4, 4, 4)),
    Entry("affine_coupling_odd", lambda r: B.conv_coupling("affine", 3, 8, rngs=r), (3, 3, 3)),
    Entry(
        "affine_coupling_cond",
        lambda r: B.conv_coupling("affine", 4, 8, context_features=3, rngs=r),
        (3, 3, 4),
        context_features=3,
    ),
    Entry(
        "additive_coupling_cond",
        lambda r: B.conv_coupling("additive", 2, 8, context_features=2, rngs=r),
        (3, 3, 2),
        context_features=2,
    ),
    Entry("squeeze", lambda r: B.Squeeze(), (4, 4, 2)),
    Entry("gaussian_split", lambda r: B.GaussianSplit(4, rngs=r), (3, 3, 4)),
    Entry(
        "gaussian_split_cond",
        lambda r: B.GaussianSplit(4, context_features=3, rngs=r),
        (3, 3, 4),
        context_features=3,
    ),
    Entry("learned_prior", lambda r: B.LearnedPrior(3, rngs=r), (2, 2, 3)),
    Entry(
        "learned_prior_cond",
        lambda r: B.LearnedPrior(3, context_features=4, rngs=r),
        (2, 2, 3),
        context_features=4,
    ),
    Entry("shift", lambda r: B.Shift(-0.5), (2, 2, 1)),
    Entry("scale", lambda r: B.Scale(1.7), (2, 3)),
    Entry("logit", lambda r: B.Logit(0.05), (2, 2, 2), domain="unit"),
    Entry(
        "chain_step",
        lambda r: B.Chain(
            [B.ActNorm(4), B.Conv1x1LU(4, rngs=r), B.conv_coupling("affine", 4, 8, rngs=r)]
        ),
        (2, 2, 4),
    ),
    Entry("invert_affine", lambda r: B.Invert(B.conv_coupling("affine", 4, 8, rngs=r)), (2, 2, 4)),
    Entry(
        "step_stack",
        lambda r: StepStack(lambda rr: glow_step(4, 8, rngs=rr), 3, rngs=r),
        (2, 2, 4),
    ),
    Entry(
        "step_stack_checkpoint_additive_shuffle",
        lambda r: StepStack(
            lambda rr: glow_step(4, 8, coupling="additive", permutation="shuffle", rngs=rr),
            2,
            rngs=r,
            backprop="checkpoint",
        ),
        (2, 2, 4),
    ),
    Entry("glow_level_split", _level(), (4, 4, 2)),
    # Glow's spline coupling, conditional (the label enters its conv net): few
    # segments and a bound inside the inputs' range, so the knots and the identity tails
    # both occur. One entry for the top level, the 1x1 convolution and the spline together:
    # the float64 Jacobian test of a level is the suite's most expensive kind.
    Entry(
        "glow_level_top_conv1x1_spline_cond",
        _level(
            context=2,
            is_top=True,
            coupling="spline",
            permutation="conv1x1",
            spline_num_segments=3,
            spline_bound=1.5,
        ),
        (2, 2, 2),
        context_features=2,
    ),
    Entry("glow_level_cond", _level(context=3), (4, 4, 2), context_features=3),
    # ---- vector couplings with an MLP conditioner; rational-quadratic splines ----
    Entry("mlp_additive_coupling", lambda r: mlp_coupling("additive", 5, 16, rngs=r), (5,)),
    Entry("mlp_affine_coupling", lambda r: mlp_coupling("affine", 4, 16, rngs=r), (4,)),
    Entry(
        "mlp_affine_coupling_cond",
        lambda r: mlp_coupling("affine", 3, 16, context_features=2, rngs=r),
        (3,),
        context_features=2,
    ),
    Entry("spline_vector", lambda r: RationalQuadraticSpline(4, 5, 2.0), (4,)),
    Entry(
        "spline_image_cond",
        lambda r: RationalQuadraticSpline(3, 4, 2.0, context_features=2, rngs=r),
        (2, 2, 3),
        context_features=2,
    ),
    Entry(
        "spline_coupling_mlp_cond",
        lambda r: spline_coupling(4, 16, num_segments=5, bound=2.0, context_features=3, rngs=r),
        (4,),
        context_features=3,
    ),
    Entry(  # per-pixel MLP conditioner; the conv one is in glow_level_top_conv1x1_spline_cond
        "spline_coupling_image",
        lambda r: spline_coupling(5, 8, num_segments=4, bound=2.0, rngs=r),
        (2, 2, 5),
    ),
    Entry("probit", lambda r: B.Probit(), (3,), domain="unit"),
    # ---- variational dequantization: noise e -> u on the unit cube, given v ----
    Entry(
        "variational_dequantizer",
        lambda r: VariationalDequantizer(
            (4, 2, 1), hidden_channels=4, num_steps=1, num_segments=3, rngs=r
        ),
        (4, 2, 1),
        context_features=(4, 2, 1),
        domain="unit",
    ),  # ---- whole models: image on the unit scale -> latents, context = class weights ----
    Entry(
        "glow_model_cond",
        lambda r: Glow(
            (4, 4, 1),
            num_levels=2,
            num_steps=1,
            hidden_channels=8,
            num_classes=3,
            condition_on="all",
            rngs=r,
        ),
        (4, 4, 1),
        context_features=3,
        domain="unit",
    ),
    # ---- TarFlow ----
    Entry(
        "tarflow_block_cond",  # one autoregressive block on (T=4, d=3) tokens, then reversed
        lambda r: TarFlowBlock(3, 4, width=8, depth=1, num_heads=2, context_features=2, rngs=r),
        (4, 3),
        context_features=2,
    ),
    Entry(
        "tarflow_model",
        lambda r: TarFlow(
            (4, 4, 1), patch_size=2, width=8, num_blocks=2, layers_per_block=1, num_heads=2, rngs=r
        ),
        (4, 4, 1),
        domain="unit",
    ),
    Entry(
        "tarflow_model_cond",  # odd number of blocks: the latents are put back in image order
        lambda r: TarFlow((4, 4, 1), **_TARFLOW_COND, rngs=r),
        (4, 4, 1),
        context_features=3,
        domain="unit",
    ),
    Entry(  # the guided model p_w(x | y): guided forward map, guided sequential inverse
        "tarflow_model_cond_guided",
        lambda r: GuidedModel(TarFlow((4, 4, 1), **_TARFLOW_COND, rngs=r), 1.5),
        (4, 4, 1),
        context_features=3,
        domain="unit",
    ),
    Entry(  # ... inverted by Jacobi updates in chunks of 3 of the 4 tokens (the last overlaps)
        "tarflow_model_cond_guided_jacobi",
        lambda r: GuidedModel(
            TarFlow((4, 4, 1), **_TARFLOW_COND, rngs=r),
            1.5,
            Sampler(("jacobi", "sequential", "jacobi"), tol=0.0, chunk=3),
        ),
        (4, 4, 1),
        context_features=3,
        domain="unit",
    ),
    Entry(
        # ml-tarflow's options (flows.convert.ml_tarflow) with its volume-preserving blocks
        # (shift only, log-det D log 2 of the [-1, 1] map alone); its affine blocks are the
        # entries above with other network options.
        "tarflow_model_ml_tarflow_vp",
        lambda r: TarFlow(
            (4, 4, 1),
            patch_size=2,
            width=8,
            num_blocks=2,
            layers_per_block=1,
            num_heads=2,
            num_classes=3,
            nvp=False,
            null_label="mean",
            context_bias=False,
            final_norm=False,
            norm_epsilon=1e-5,
            gelu_approximate=False,
            sampling_variance=True,
            rngs=r,
        ),
        (4, 4, 1),
        context_features=3,
        domain="unit",
    ),
    Entry(  # bf16 operands in the transformers' products (float32, float64 here, sums), the
        # hand-written VJP of the row products: forward and token-by-token inverse alike
        "tarflow_model_bf16_gemm_cond",
        lambda r: TarFlow(
            (4, 4, 1),
            patch_size=2,
            width=8,
            num_blocks=3,
            layers_per_block=1,
            num_heads=2,
            num_classes=3,
            matmul_impl="gemm",
            compute_dtype="bfloat16",
            rngs=r,
        ),
        (4, 4, 1),
        context_features=3,
        domain="unit",
        jacobian_rtol=BF16_JACOBIAN_RTOL,
    ),
    # ---- Jet ----
    Entry("patchify", lambda r: B.Patchify((4, 6, 2), 2), (4, 6, 2)),
    Entry(
        "jet_channel_coupling",
        lambda r: JetCoupling("channels", 4, 5, channel_projection(3, 5), **_JET_NET, rngs=r),
        (4, 5),
    ),
    Entry(
        "jet_spatial_coupling_cond",
        lambda r: JetCoupling(
            "spatial",
            6,
            3,
            spatial_projection("vstripes-inv", (3, 2)),
            **_JET_NET,
            context_features=2,
            rngs=r,
        ),
        (6, 3),
        context_features=2,
    ),
    Entry(  # big_vision's layout: x1's 3 tokens of 4 features seen as 6 tokens of 2
        "jet_spatial_coupling_cut",
        lambda r: JetCoupling(
            "spatial",
            6,
            4,
            spatial_projection("checkerboard", (3, 2)),
            **_JET_NET,
            spatial_cut=True,
            qkv_init="separate",
            rngs=r,
        ),
        (6, 4),
    ),
    Entry(  # 3 couplings, pattern (channels, spatial): one scanned group and a tail
        "jet_model",
        lambda r: Jet((4, 4, 1), **_JET_MODEL, rngs=r),
        (4, 4, 1),
        domain="unit",
    ),
    Entry(
        "jet_model_cond",
        lambda r: Jet((4, 4, 1), **_JET_MODEL, num_classes=3, rngs=r),
        (4, 4, 1),
        context_features=3,
        domain="unit",
    ),
    Entry(  # big_vision's Jet (flows.convert.big_vision_jet) with its 8-bit input scale
        "jet_model_big_vision",
        lambda r: Jet(
            (4, 4, 1),
            **{**_JET_MODEL, "num_couplings": 2},  # one group: channels, spatial (cut)
            spatial_cut=True,
            qkv_init="separate",
            input_scale=512 / 255,
            rngs=r,
        ),
        (4, 4, 1),
        domain="unit",
    ),
    Entry(  # the guided model: guided couplings forward and back
        "jet_model_cond_guided",
        lambda r: GuidedModel(Jet((4, 4, 1), **_JET_MODEL, num_classes=3, rngs=r), 1.5),
        (4, 4, 1),
        context_features=3,
        domain="unit",
    ),
    Entry(  # bf16 operands in the coupling networks' products; the projections stay exact
        "jet_model_bf16",
        lambda r: Jet((4, 4, 1), **_JET_MODEL, compute_dtype="bfloat16", rngs=r),
        (4, 4, 1),
        domain="unit",
        jacobian_rtol=BF16_JACOBIAN_RTOL,
    ),
]

BATCH = 2  # examples per input batch
# The float32 tolerances of the round trip and of jit against eager.
ROUND_TRIP_ATOL = 1e-4  # |x2 - x|
LOG_DET_RTOL, LOG_DET_ATOL = 1e-4, 1e-3  # |ild + ld| <= atol + rtol |ld|
JIT_EAGER_RTOL, JIT_EAGER_ATOL = 1e-5, 1e-5


def inputs(entry: Entry, dtype, seed: int = 0, batch: int = BATCH):
    """``(x, context)``: a batch of inputs of ``entry`` (``x ~ N(0, 1)``, or ``U(0.02, 0.98)``
    for the 'unit' domain) and its context (``N(0, 1)``, or None), of ``dtype``."""
    kx, kc = jax.random.split(jax.random.key(seed))
    shape = (batch, *entry.event_shape)
    if entry.domain == "unit":
        x = jax.random.uniform(kx, shape, dtype, 0.02, 0.98)
    else:
        x = jax.random.normal(kx, shape, dtype)
    ctx = None
    if entry.context_features:
        features = entry.context_features
        features = (features,) if isinstance(features, int) else tuple(features)
        ctx = jax.random.normal(kc, (batch, *features), dtype)
    return x, ctx


def perturb_params(module, rng: np.random.Generator, scale: float = 0.1, dtype=None):
    """Adds ``scale`` times standard-normal noise from ``rng`` to every float parameter of
    ``module`` (in place; returned), cast to ``dtype`` (None: each parameter's own), so the
    zero-initialised output layers act. numpy noise: no per-shape XLA compilation."""

    def perturb(v):
        if jnp.issubdtype(v.dtype, jnp.floating):
            noisy = np.asarray(v) + scale * rng.standard_normal(v.shape)
            return jnp.asarray(noisy, v.dtype if dtype is None else dtype)
        return v

    nnx.update(module, jax.tree.map(perturb, nnx.state(module, nnx.Param)))
    return module


def build(entry: Entry, dtype=jnp.float32, seed: int = 0):
    """``(layer, x, context)``: a layer with every float parameter perturbed and
    data-dependent init done, and the inputs (``inputs``) it was initialised on."""
    layer = entry.make(nnx.Rngs(seed))
    x, ctx = inputs(entry, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    perturb_params(layer, rng, dtype=dtype)
    layer.initialize(x, context=ctx)
    # Perturb again after init so ActNorm is not exactly standardising (a harder test).
    perturb_params(layer, rng, dtype=dtype)
    return layer, x, ctx


def round_trip(layer, x, ctx):
    """``(z, ld, x2, ild)``: forward then inverse, with both log-dets."""
    z, ld = layer.forward_and_log_det(x, context=ctx)
    x2, ild = layer.inverse_and_log_det(z, context=ctx)
    return z, ld, x2, ild
