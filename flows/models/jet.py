"""Jet (Kolesnikov et al. 2024, "Jet: A Modern Transformer-Based Normalizing Flow").

The image is mapped to [-1, 1) and cut into patches, and a stack of affine couplings whose
networks are ViTs (``flows.nn.transformer.Transformer``) maps the tokens to standard normals:

    x in [0, 1)^D  ->  a x - 1, a = input_scale = 2   (Scale(a), Shift(-1): log|det| = D log a)
                   ->  tokens (T, d), d = p*p*C        (Patchify: log|det| = 0)
                   ->  N couplings                     (flows.bijectors.jet_coupling.JetCoupling)
                   ->  latents (T, d) ~ N(0, I)

    log p(x | y) = log N(z; 0, I) + D log a + sum_couplings sum log s.

So ``log_prob`` is the density of x on the unit scale, like every family's, and bits/dim
follow from ``flows.likelihood`` (``D log K`` with K levels). Jet's own code reports the density
of the [-1, 1) image with ``log 127.5`` per dimension; that is the same number: the D log a
of the scaling is carried by a bijector here, never by a constant in the loss.

big_vision's Jet (``models/proj/jet/jet.py``) is this model with ``spatial_cut=True`` (its
spatial couplings' networks see the conditioning tokens cut in two) and, for training from
scratch, ``qkv_init='separate'``; ``flows.convert.from_big_vision_jet`` loads its parameters
(and its projections) into one. Its trainer scales 8-bit values by ``v / 127.5 - 1`` and adds
noise of width ``1 / 127.5``, i.e. ``(v + u) / 255`` on the unit scale where this codebase
uses ``(v + u) / 256``; ``input_scale = 512 / 255`` (``2 K / (K - 1)`` for K levels) feeds
the model the reference's inputs from ours, and then our bits/dim (``D log 256``) equal its
(``D log 127.5``) exactly: ``-log p(x) + D log K`` is the same number for both scales. The
rest is the same as big_vision's: its ViT (learned positions N(0, 1/width), pre-norm blocks,
layer norms with epsilon 1e-6, an MLP of 4 x width with tanh-GELU, no dropout, a final layer
norm, a zero-initialised output layer whose first half is the shift b and second the raw
scale r), the coupling maths and the order of couplings and splits. Not the same: our MLP
biases start at 0 (its at N(0, 1e-6)), and its conditional variant (a cross-attention on a
context sequence) is not our label embedding.

Couplings alternate by a repeating ``coupling_pattern`` (e.g. channels, channels, spatial):
a channel coupling splits each token's d features by a fixed random permutation (seeded by
``projection_seed`` and the coupling's index), a spatial coupling splits the T tokens by the
next entry of ``spatial_splits`` (checkerboard, vertical / horizontal stripes and their
complements ``-inv``), cycled. The split projections are buffers (never trained) applied at
``Precision.HIGHEST``.

Compile time does not grow with depth: the couplings of one repeat of the pattern form a
``CouplingGroup``; the ``num_couplings // len(pattern)`` groups are created with ``nnx.vmap``
(parameters and projections stacked on a leading axis) and applied with ``lax.scan``; the
``num_couplings % len(pattern)`` couplings left over (a prefix of the pattern) follow
unscanned.

Conditioning (``num_classes``): the class weights (one-hot labels, all-zero for "no label",
which ``model.label_dropout`` trains) go into every coupling network's ``context_features``
(a learned label embedding added to every token; the paper's cross-attention is not used).
``guided_inverse`` implements classifier-free guidance: in every coupling's inverse the
shift and the raw scale are ``(1 + w) f(x1, y) - w f(x1, none)``. A guided coupling is still
a coupling, so the guided model is a flow with an exact density, ``log p_w(x | y)``
(``guided_forward_and_log_det``, ``DensityModel.guided_log_prob``).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from flows.bijectors import Patchify, Scale, Shift
from flows.bijectors.jet_coupling import (
    CHANNEL_SPLITS,
    COUPLING_KINDS,
    SPATIAL_SPLITS,
    CouplingGroup,
    JetCoupling,
    channel_projection,
    spatial_projection,
)
from flows.errors import ConfigError
from flows.models.base import DensityModel
from flows.models.registry import check_positive_ints, register_model
from flows.models.steps import carry_dtype
from flows.nn.backend import resolve_compute_dtype, resolve_matmul_impl
from flows.nn.transformer import QKV_INITS


def parse_names(value, field: str) -> tuple[str, ...]:
    """A comma-separated string (or a sequence) of names as a tuple."""
    if isinstance(value, str):
        names = tuple(v.strip() for v in value.split(",") if v.strip())
    else:
        names = tuple(value)
    if not names:
        raise ConfigError(f"{field} must name at least one entry, got {value!r}")
    return names


@register_model("jet")
class Jet(DensityModel):
    """Jet over images of shape ``image_shape = (H, W, C)``.

    Args (every one after ``num_classes`` is a field of ``config.model``, defaults here):
      num_classes: None for p(x); N for p(x | y).
      patch_size: p; divides H and W. Tokens: T = HW / p^2 of d = p^2 C features.
      num_couplings: the number of couplings (Jet's ``depth``).
      block_depth: transformer blocks per coupling network.
      width, num_heads, mlp_ratio: the coupling networks' (ViT) sizes; width divisible by
        num_heads.
      coupling_pattern: kinds (``'channels'``, ``'spatial'``) repeated in this order, a
        comma-separated string or a sequence.
      spatial_splits: the spatial couplings' splits, cycled: ``'checkerboard'``,
        ``'vstripes'``, ``'hstripes'`` and their complements (``'-inv'``), comma-separated
        or a sequence (``flows.bijectors.jet_coupling``).
      channel_split: ``'random'`` (a fixed random permutation of the features per coupling).
      scale_factor: s = scale_factor * sigmoid(r); 2 (Jet's) gives s = 1 at r = 0, so every
        coupling starts as the identity (the networks' outputs start at zero).
      projection_seed: seed of the channel couplings' fixed permutations.
      spatial_cut: False: a spatial coupling's network sees the T/2 conditioning tokens of d
        features; True (big_vision's): each cut into two tokens of d/2 features, so it has
        the shape of a channel coupling's network (``flows.bijectors.jet_coupling``); needs
        an even d.
      qkv_init: ``'fused'``: the attention's q/k/v kernel drawn as one Xavier matrix;
        ``'separate'`` (big_vision's, whose q, k, v are three layers): three, each with the
        fans of one (a larger init).
      input_scale: a in the first map x -> a x - 1; 2 (Jet's) maps [0, 1) onto [-1, 1);
        512/255 reproduces big_vision's inputs and bits/dim on 8-bit data (module docstring).
      matmul_impl: the coupling networks' row products, ``'lax'`` (default: plain
        products and autodiff, ``jax.jvp`` works), ``'gemm'`` (the hand-written VJP of
        TarFlow's CPU default, reverse mode only) or ``'auto'``
        (``flows.nn.backend.resolve_matmul_impl``).
        ``self.matmul_impl`` / ``self.matmul_impl_reason`` hold the resolved choice.
      compute_dtype: matrix-product dtype of the coupling networks, ``'float32'``,
        ``'bfloat16'`` (the ViTs' dense layers and attention products take bf16 operands,
        summed in f32; layer norms, softmax, the fixed projections (``Precision.HIGHEST``),
        the affine maps and every log-det stay float32, so log p(x) is exact for the map
        computed) or ``'auto'``: bfloat16 only where it is faster, float32 otherwise
        (``flows.nn.backend.resolve_compute_dtype``). ``self.compute_dtype`` /
        ``self.compute_dtype_reason`` hold the resolved choice and why.
    """

    def __init__(
        self,
        image_shape,
        num_classes: int | None = None,
        *,
        patch_size: int = 4,
        num_couplings: int = 32,
        block_depth: int = 2,
        width: int = 512,
        num_heads: int = 8,
        mlp_ratio: int = 4,
        coupling_pattern="channels,channels,spatial",
        spatial_splits="checkerboard,checkerboard-inv",
        channel_split: str = "random",
        scale_factor: float = 2.0,
        projection_seed: int = 0,
        spatial_cut: bool = False,
        qkv_init: str = "fused",
        input_scale: float = 2.0,
        matmul_impl: str = "lax",
        compute_dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        super().__init__(image_shape, num_classes)
        self.matmul_impl, self.matmul_impl_reason = resolve_matmul_impl(matmul_impl)
        self.compute_dtype, self.compute_dtype_reason = resolve_compute_dtype(compute_dtype)
        h, w, c = self.image_shape
        check_positive_ints(
            patch_size=patch_size,
            num_couplings=num_couplings,
            block_depth=block_depth,
            width=width,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
        )
        p = patch_size
        if h % p or w % p:
            raise ConfigError(f"patch_size {p} does not divide the image size {h}x{w}")
        if width % num_heads:
            raise ConfigError(f"width {width} is not divisible by num_heads {num_heads}")
        pattern = parse_names(coupling_pattern, "coupling_pattern")
        bad = [k for k in pattern if k not in COUPLING_KINDS]
        if bad:
            raise ConfigError(f"unknown coupling kind {bad[0]!r}; choose from {COUPLING_KINDS}")
        splits = parse_names(spatial_splits, "spatial_splits")
        bad = [s for s in splits if s not in SPATIAL_SPLITS]
        if bad:
            raise ConfigError(f"unknown spatial split {bad[0]!r}; choose from {SPATIAL_SPLITS}")
        if channel_split not in CHANNEL_SPLITS:
            raise ConfigError(f"unknown channel_split {channel_split!r}; use 'random'")
        for name, value in (("scale_factor", scale_factor), ("input_scale", input_scale)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"model.{name} must be a positive number, got {value!r}")
        if not isinstance(spatial_cut, bool):
            raise ConfigError(f"model.spatial_cut must be True or False, got {spatial_cut!r}")
        if qkv_init not in QKV_INITS:
            raise ConfigError(f"unknown qkv_init {qkv_init!r}; choose from {QKV_INITS}")
        grid = (h // p, w // p)
        num_tokens, features = grid[0] * grid[1], p * p * c
        kinds = [k for k, _ in zip(itertools.cycle(pattern), range(num_couplings), strict=False)]
        if "channels" in kinds and features < 2:
            raise ConfigError(
                f"channel couplings need at least 2 features per token, got p*p*C = {features}"
            )
        if "spatial" in kinds:
            if spatial_cut and features % 2:
                raise ConfigError(
                    f"spatial_cut needs an even number of features per token, got p*p*C = "
                    f"{features}"
                )
            if num_tokens % 2:
                raise ConfigError(
                    f"spatial couplings need an even number of tokens, got {grid[0]}x{grid[1]}"
                )
            for s in splits:
                try:
                    spatial_projection(s, grid)
                except ValueError as e:
                    raise ConfigError(str(e)) from None

        # The fixed projections of every coupling, in order.
        spatial = itertools.cycle(splits)
        projections = []
        for i, kind in enumerate(kinds):
            if kind == "channels":
                projections.append(channel_projection([int(projection_seed), i], features))
            else:
                projections.append(spatial_projection(next(spatial), grid))

        def coupling(kind, projection, r):
            return JetCoupling(
                kind,
                num_tokens,
                features,
                projection,
                width=width,
                depth=block_depth,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                scale_factor=scale_factor,
                context_features=num_classes,
                spatial_cut=spatial_cut,
                qkv_init=qkv_init,
                compute_dtype=self.compute_dtype,
                matmul_impl=self.matmul_impl,
                rngs=r,
            )

        self.scale, self.shift = Scale(float(input_scale)), Shift(-1.0)  # [0, 1) -> [-1, 1)
        self.patchify = Patchify(self.image_shape, p)
        self.latent_shape = (num_tokens, features)
        self.pattern = pattern
        period = len(pattern)
        num_groups = num_couplings // period
        self.num_groups = num_groups
        if num_groups:
            stacked = [
                jnp.stack(projections[j : num_groups * period : period]) for j in range(period)
            ]

            @nnx.jit
            @nnx.split_rngs(splits=num_groups)
            @nnx.vmap(in_axes=(0, 0), out_axes=0)
            def create(r, projs):
                return CouplingGroup(
                    [coupling(k, q, r) for k, q in zip(pattern, projs, strict=True)]
                )

            self.groups = create(rngs, stacked)
        else:
            self.groups = nnx.data(None)
        tail = range(num_groups * period, len(kinds))
        if tail:
            # Compiled, like the groups: eager initialisation dispatches every op separately.
            @nnx.jit
            def create_tail(r):
                return CouplingGroup([coupling(kinds[i], projections[i], r) for i in tail])

            self.tail = create_tail(rngs)
        else:
            self.tail = nnx.data(None)

    # -- the bijection ----------------------------------------------------------------------
    def _scan(self, h, ctx, *, inverse, guidance=0.0, null=None):
        graphdef, state = nnx.split(self.groups)
        h = h.astype(carry_dtype(h, ctx, state))

        def body(carry, group_state):
            x, log_det = carry
            group = nnx.merge(graphdef, group_state)
            method = group.inverse_and_log_det if inverse else group.forward_and_log_det
            y, ld = method(x, context=ctx, guidance=guidance, null_context=null)
            return (y, log_det + ld), None

        init = (h, jnp.zeros(h.shape[:1], h.dtype))
        (h, log_det), _ = jax.lax.scan(body, init, state, reverse=inverse)
        return h, log_det

    def _forward(self, x, ctx, guidance=0.0, null=None):
        self.check_images(x)
        log_det = jnp.zeros(x.shape[:1], x.dtype)
        for b in (self.scale, self.shift, self.patchify):
            x, ld = b.forward_and_log_det(x)
            log_det = log_det + ld
        if self.groups is not None:
            x, ld = self._scan(x, ctx, inverse=False, guidance=guidance, null=null)
            log_det = log_det + ld
        if self.tail is not None:
            x, ld = self.tail.forward_and_log_det(
                x, context=ctx, guidance=guidance, null_context=null
            )
            log_det = log_det + ld
        return x, log_det

    def forward_and_log_det(self, x, *, context=None):
        """x in [0, 1)^D -> (latents (batch, T, d), log|det|)."""
        return self._forward(x, self.context_features(context))

    def _inverse(self, z, ctx, guidance=0.0, null=None):
        log_det = jnp.zeros(z.shape[:1], z.dtype)
        if self.tail is not None:
            z, ld = self.tail.inverse_and_log_det(
                z, context=ctx, guidance=guidance, null_context=null
            )
            log_det = log_det + ld
        if self.groups is not None:
            z, ld = self._scan(z, ctx, inverse=True, guidance=guidance, null=null)
            log_det = log_det + ld
        for b in (self.patchify, self.shift, self.scale):
            z, ld = b.inverse_and_log_det(z)
            log_det = log_det + ld
        return z, log_det

    def inverse_and_log_det(self, latents, *, context=None):
        return self._inverse(latents, self.context_features(context))

    def guided_inverse(self, latents, *, context, guidance: float):
        """The inverse with classifier-free guidance weight w: every coupling's shift and raw
        scale are ``(1 + w) f(x1, y) - w f(x1, none)`` (w = 0: the plain inverse)."""
        return self.guided_inverse_and_log_det(latents, context=context, guidance=guidance)[0]

    def guided_inverse_and_log_det(self, latents, *, context, guidance: float):
        """``guided_inverse`` with its log|det| (a Python float ``guidance``)."""
        ctx = self.context_features(context)
        if not guidance:
            return self._inverse(latents, ctx)
        return self._inverse(latents, ctx, float(guidance), self.null_context(len(latents)))

    def guided_forward_and_log_det(self, x, *, context, guidance: float):
        """The guided model's forward map (the inverse of ``guided_inverse``): every guided
        coupling's forward map, so ``log N(z; 0, I) + log|det|`` is ``log p_w(x | y)``
        exactly (``DensityModel.guided_log_prob``); a Python float ``guidance``."""
        ctx = self.context_features(context)
        if not guidance:
            return self._forward(x, ctx)
        return self._forward(x, ctx, float(guidance), self.null_context(len(x)))

    def initialize(self, x, *, context=None) -> None:
        """No data-dependent initialisation (every coupling starts as the identity)."""
        self.check_images(x)

    def sample_latents(self, key, num: int, temperature: float = 1.0):
        return temperature * jax.random.normal(key, (num, *self.latent_shape))

    @classmethod
    def describe_config(cls, m) -> str:
        """E.g. ``jet p2 16x1 w128 h4 ccs``: patch, couplings x block depth, width, heads,
        and the coupling pattern's initials (then ``cut`` with ``spatial_cut``)."""
        pattern = "".join(k[0] for k in parse_names(m["coupling_pattern"], "coupling_pattern"))
        text = (
            f"jet p{m['patch_size']} {m['num_couplings']}x{m['block_depth']} w{m['width']} "
            f"h{m['num_heads']} {pattern}"
        )
        if m.get("spatial_cut"):
            text += " cut"
        if m.get("conditional"):
            text += " cond"
        return text
