"""TarFlow (Zhai et al. 2024): a stack of autoregressive flow blocks, each a causal transformer.

Data path (forward, data -> latent), for an image ``x`` on the unit scale ``[0, 1)^D``:

1. ``y = 2 x - 1`` maps x onto ``[-1, 1)`` (the scale TarFlow works on). It is a bijector
   in the chain (``Scale(2)`` then ``Shift(-1)``), so its log-det ``D log 2`` is counted
   in ``log_prob``: ``log p(x) = log p(y) + D log 2``. ``log_prob`` is therefore the density
   of x on the unit scale and ``flows.likelihood.bits_per_dim`` gives the papers' convention.
2. Patchify: (H, W, C) -> T = (H/p)(W/p) tokens of d = p*p*C features (row-major patches;
   a permutation, log-det 0).
3. ``num_blocks`` autoregressive blocks (``TarFlowBlock``). Block k reads its tokens in the
   order the previous block left them and reverses them at its end, so the blocks alternate
   between the identity and the reversed token order. After the last block the tokens are
   put back in image order (a fixed permutation) and un-patchified, so the latents have the
   image's shape and are standard normal under the model:

       log p(x | y) = log N(z; 0, I) + sum_blocks log|det| + D log 2.

The blocks are created with ``nnx.vmap`` and run with ``lax.scan`` (``flows.models.steps.
StepStack``), so the compiled program does not grow with ``num_blocks``.

Inverse (sampling): block by block in reverse; inside a block token by token with the
transformer's key/value cache (``Transformer.decode_step``) in a ``lax.fori_loop`` over the
tokens, inside the ``lax.scan`` over blocks: one compiled program, no Python loop over tokens.

Conditioning (``num_classes`` set): the context, one-hot labels or class weights
(``DensityModel.context_features``; all-zero = "no label", trained by the generic
``model.label_dropout``), enters every transformer through its learned context projection.
With ``null_label='mean'`` class weights ``w`` are first mapped to ``w + (1 - sum w) / N``:
the identity on one-hot labels and on any weights summing to one, and the all-zero "no label"
weights become the uniform ones, so the unconditional branch is the mean class embedding.
Classifier-free guidance (``guided_inverse``): per token, ``mu = (1 + w_t) mu(y) - w_t
mu(none)`` and the same for ``alpha`` (``guidance_on`` may restrict it to one of them;
``guided_shift_and_log_scale``); both branches run in the same decoding loop (the batch
concatenated with the null-context batch) and both caches are fed the guided tokens. The
weight is ``w_t = w`` (``guidance_schedule='constant'``) or grows linearly over the tokens,
``w_t = w (t + 1) / (T - 1)`` for token t + 1 (``'linear'``, the paper's annealed guidance);
``guidance_attention_temperature`` divides the unconditional branch's attention logits.

ml-tarflow (``transformer_flow.Model``): the options below compute its function exactly on
its weights (``flows.convert.from_ml_tarflow`` converts them). What already agrees: the
attention scale ``1/sqrt(head_dim)``, the pre-norm blocks, learned positions added after the
input projection, the class embedding added to every token, the right shift of the outputs,
the alternating token order, the row-major order of the patches. What the converter maps by
permuting weights (no option): its channel-major features within a patch (``unfold``), its
``(log-scale, shift)`` output order, and its position embedding, which its reversed blocks
reverse with the tokens (ours is indexed by sequence position). Its options: ``nvp=False``
(its volume-preserving mode: shift only, ``alpha = 0``); the mean class embedding as the
unconditional branch (``null_label='mean'``) and a class-embedding table without bias
(``context_bias=False``); no LN before the output projection (``final_norm=False``);
PyTorch's LN epsilon 1e-5 (``norm_epsilon``) and exact GELU (``gelu_approximate=False``);
``sampling_variance=True``: its buffer ``var`` (per latent dimension, an estimate of
``E[z^2]`` that its volume-preserving training tracks, all ones otherwise) is our buffer
``latent_variance``, and sampling draws ``z ~ N(0, T^2 var)``, while the likelihood keeps
the standard normal (as ml-tarflow's does); nothing here updates it during training.
ml-tarflow's sampling arguments ``guide_what`` ('ab', 'a', 'b'), ``annealed_guidance`` and
``attn_temp`` are ``guidance_on`` ('both', 'log_scale', 'shift'), ``guidance_schedule``
('linear') and ``guidance_attention_temperature``. Its log-det is the mean over the D
dimensions (ours the sum) and its images are ``2x - 1``: ``log p_ours(x) = log N(z; 0, I) +
D * logdet_ref + D log 2``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from flows.bijectors import Bijector, Buffer, Chain, Patchify, Scale, Shift
from flows.errors import ConfigError
from flows.models.base import DensityModel
from flows.models.registry import check_positive_ints, register_model
from flows.models.steps import StepStack, check_backprop
from flows.nn.backend import resolve_compute_dtype, resolve_matmul_impl
from flows.nn.transformer import Transformer

GUIDANCE_SCHEDULES = ("constant", "linear")
GUIDANCE_TARGETS = ("both", "shift", "log_scale")
NULL_LABELS = ("zero", "mean")
# TarFlow's names of flows.models.steps.BACKPROP, its default first.
BACKPROP_MODES = ("save_dots", "checkpoint", "autodiff")


def guidance_weights(guidance, num_tokens: int, schedule: str, dtype=jnp.float32):
    """Guidance weight per predicted token ``t + 1`` for ``t = 0 .. T-2``: shape (T - 1,)."""
    steps = max(num_tokens - 1, 1)
    if schedule == "constant":
        return jnp.full((num_tokens - 1,), guidance, dtype)
    if schedule == "linear":
        return guidance * jnp.arange(1, num_tokens, dtype=dtype) / steps
    raise ConfigError(
        f"guidance_schedule must be one of {list(GUIDANCE_SCHEDULES)}, got {schedule!r}"
    )


def guided_shift_and_log_scale(mu, alpha, batch: int, weight, guidance_on: str = "both"):
    """Classifier-free guidance of one decoding step: ``mu`` and ``alpha`` hold the
    conditional branch's rows ``[:batch]`` and the unconditional branch's ``[batch:]``;
    returns ``(1 + w) f(y) - w f(none)`` for the targets ``guidance_on`` names (``'both'``,
    ``'shift'``: mu, ``'log_scale'``: alpha) and the conditional value for the other."""

    def mix(value, target):
        cond, null = value[:batch], value[batch:]
        if guidance_on in ("both", target):
            return (1 + weight) * cond - weight * null
        return cond

    return mix(mu, "shift"), mix(alpha, "log_scale")


class TarFlowBlock(Bijector):
    """One autoregressive affine flow over tokens (B, T, d), followed by reversing them.

    A causal transformer reads the tokens x; its outputs are shifted right by one token, so
    ``(mu_t, alpha_t)`` depend on ``x_{<t}`` only (token 0 gets ``mu = alpha = 0``):

        Forward:  z_t = (x_t - mu_t(x_{<t})) * exp(-alpha_t(x_{<t})),   z -> reverse(z)
        log|det dz/dx| = -sum_{t, i} alpha_{t, i}         (triangular Jacobian)
        Inverse:  x_t = z_t * exp(alpha_t(x_{<t})) + mu_t(x_{<t}),  t = 0, 1, ..., T-1

    The inverse is sequential: step t feeds token x_t to the transformer with its key/value
    cache (``Transformer.decode_step``) and gets ``(mu, alpha)`` of token t + 1. The
    transformer's output layer starts at zero, so a fresh block is the identity (then the
    reversal). ``nvp=False``: the transformer predicts ``mu`` only and ``alpha = 0`` (volume
    preserving, log-det 0). ``network``: ``flows.nn.transformer.Transformer``'s options
    (``final_norm``, ``norm_epsilon``, ``gelu_approximate``, ``context_bias``,
    ``compute_dtype``).
    """

    def __init__(
        self,
        features: int,
        num_tokens: int,
        *,
        width: int,
        depth: int,
        num_heads: int,
        mlp_ratio: int = 4,
        context_features: int | None = None,
        matmul_impl: str = "lax",
        nvp: bool = True,
        rngs: nnx.Rngs,
        **network,
    ):
        self.features = features
        self.num_tokens = num_tokens
        self.nvp = bool(nvp)
        self.net = Transformer(
            features,
            2 * features if self.nvp else features,
            num_tokens=num_tokens,
            width=width,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            causal=True,
            context_features=context_features,
            matmul_impl=matmul_impl,
            rngs=rngs,
            **network,
        )

    def _split(self, out):
        """The transformer's outputs -> ``(mu, alpha)``."""
        if not self.nvp:
            return out, jnp.zeros_like(out)
        return out[..., : self.features], out[..., self.features :]

    def _shift_and_log_scale(self, x, context):
        out = self.net(x, context)
        out = jnp.concatenate([jnp.zeros_like(out[:, :1]), out[:, :-1]], axis=1)
        return self._split(out)

    def forward_and_log_det(self, x, *, context=None):
        mu, alpha = self._shift_and_log_scale(x, context)
        z = (x - mu) * jnp.exp(-alpha)
        return z[:, ::-1], -jnp.sum(alpha, axis=(1, 2))

    def inverse_and_log_det(self, z, *, context=None):
        return self.decode(z[:, ::-1], context)

    def guided_inverse_and_log_det(
        self, z, *, context, weights, guidance_on="both", attention_temperature=1.0
    ):
        """The inverse with classifier-free guidance: ``context = (labels' features, null
        features)``, ``weights`` (T - 1,) the guidance weight of each predicted token,
        ``guidance_on`` what it applies to and ``attention_temperature`` the unconditional
        branch's (``guided_shift_and_log_scale``)."""
        return self.decode(
            z[:, ::-1],
            context,
            weights=weights,
            guidance_on=guidance_on,
            attention_temperature=attention_temperature,
        )

    def decode(self, z, context, weights=None, guidance_on="both", attention_temperature=1.0):
        """Token-by-token inverse of the autoregressive map (tokens in this block's order).

        ``weights`` None: plain inverse under ``context``. Otherwise ``context`` is a pair
        ``(cond, null)`` and each step runs both branches as one batch of 2B (the null
        branch's attention logits divided by ``attention_temperature``) and combines them
        with ``guided_shift_and_log_scale``; the log-det is then that of the guided map."""
        b, t_max, _ = z.shape
        guided = weights is not None
        temperature = None
        if guided:
            cond, null = context
            ctx = jnp.concatenate([cond, null], axis=0)
            if attention_temperature != 1.0:
                temperature = jnp.concatenate(
                    [jnp.ones((b,), z.dtype), jnp.full((b,), attention_temperature, z.dtype)]
                )
        else:
            ctx = context
        cache = self.net.init_cache(2 * b if guided else b, z.dtype)

        def body(t, carry):
            x, cache, log_det = carry
            x_t = jax.lax.dynamic_slice_in_dim(x, t, 1, axis=1)
            if guided:
                x_t = jnp.concatenate([x_t, x_t], axis=0)
            out, cache = self.net.decode_step(x_t, t, cache, ctx, temperature)
            mu, alpha = self._split(out)
            if guided:
                w = weights[t].astype(out.dtype)
                mu, alpha = guided_shift_and_log_scale(mu, alpha, b, w, guidance_on)
            z_next = jax.lax.dynamic_slice_in_dim(z, t + 1, 1, axis=1)
            x_next = z_next * jnp.exp(alpha) + mu
            x = jax.lax.dynamic_update_slice_in_dim(x, x_next, t + 1, axis=1)
            return x, cache, log_det + jnp.sum(alpha, axis=(1, 2))

        init = (z, cache, jnp.zeros((b,), z.dtype))
        x, _, log_det = jax.lax.fori_loop(0, t_max - 1, body, init)
        return x, log_det


@register_model("tarflow")
class TarFlow(DensityModel):
    """TarFlow over images of shape ``image_shape = (H, W, C)``.

    Args (every one after ``num_classes`` is a field of ``config.model``, defaults here):
      image_shape: (H, W, C); H and W divisible by ``patch_size``.
      num_classes: None for p(x); N for a label-conditioned p(x | y).
      patch_size: p; tokens are p x p patches (d = p*p*C features, T = HW / p^2 tokens).
      width: each block's transformer width (divisible by ``num_heads``).
      num_blocks: autoregressive flow blocks, alternating identity and reversed token order.
      layers_per_block: transformer layers per block.
      num_heads: attention heads.
      mlp_ratio: the transformers' MLP hidden size is ``mlp_ratio * width``.
      guidance_schedule: the classifier-free guidance weight over the tokens,
        ``'constant'`` or ``'linear'`` (annealed; see the module docstring).
      guidance_on: what guidance extrapolates, ``'both'`` (mu and alpha), ``'shift'`` (mu)
        or ``'log_scale'`` (alpha); ml-tarflow's ``guide_what`` 'ab', 'b', 'a'.
      guidance_attention_temperature: divides the unconditional branch's attention logits
        in guided sampling (ml-tarflow's ``attn_temp``; 1: none).
      nvp: affine blocks (True) or volume-preserving ones, shift only (False; ml-tarflow's
        ``nvp``, default True as here).
      null_label: the unconditional branch: ``'zero'`` (the all-zero context) or
        ``'mean'`` (the mean class embedding, ml-tarflow's; module docstring).
      context_bias: the label projection has a bias (ml-tarflow's class embedding: False).
      final_norm: a LayerNorm before each transformer's output layer (ml-tarflow: False).
      norm_epsilon: the LayerNorms' epsilon (ml-tarflow, PyTorch's default: 1e-5).
      gelu_approximate: tanh-approximate GELU (ml-tarflow, PyTorch's default: exact, False).
      sampling_variance: keep the buffer ``latent_variance`` (image-shaped, ones) and draw
        sampling latents ``N(0, T^2 latent_variance)`` (ml-tarflow's ``var``: True).
      backprop: how the block stack is differentiated, one of ``BACKPROP_MODES``:
        ``'save_dots'`` (the fastest on XLA:CPU), ``'checkpoint'`` or ``'autodiff'``; the
        same gradients (the names' meanings: ``flows.models.steps``).
      matmul_impl: the transformers' row products, ``'auto'`` (default), ``'gemm'`` or
        ``'lax'`` (``flows.nn.backend.resolve_matmul_impl``; ``'lax'`` for ``jax.jvp``).
        ``self.matmul_impl`` / ``self.matmul_impl_reason`` hold the resolved choice.
      compute_dtype: matrix-product dtype of the transformers, ``'float32'``, ``'bfloat16'``
        (the dense layers' and attention products' operands rounded to bf16, summed in f32;
        layer norms, softmax, the affine maps, every log-det and the prior stay float32, so
        log p(x) is exact for the map computed, and sampling runs the same network) or
        ``'auto'``: bfloat16 only where it is faster, float32 otherwise
        (``flows.nn.backend.resolve_compute_dtype``). ``self.compute_dtype`` /
        ``self.compute_dtype_reason`` hold the resolved choice and why.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int | None = None,
        *,
        patch_size: int = 2,
        width: int = 128,
        num_blocks: int = 4,
        layers_per_block: int = 2,
        num_heads: int = 2,
        mlp_ratio: int = 4,
        guidance_schedule: str = "constant",
        guidance_on: str = "both",
        guidance_attention_temperature: float = 1.0,
        nvp: bool = True,
        null_label: str = "zero",
        context_bias: bool = True,
        final_norm: bool = True,
        norm_epsilon: float = 1e-6,
        gelu_approximate: bool = True,
        sampling_variance: bool = False,
        backprop: str = "save_dots",
        matmul_impl: str = "auto",
        compute_dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        super().__init__(image_shape, num_classes)
        self.matmul_impl, self.matmul_impl_reason = resolve_matmul_impl(matmul_impl)
        self.compute_dtype, self.compute_dtype_reason = resolve_compute_dtype(
            compute_dtype, autodiff=self.matmul_impl == "lax"
        )
        h, w, c = self.image_shape
        check_positive_ints(
            patch_size=patch_size,
            width=width,
            num_blocks=num_blocks,
            layers_per_block=layers_per_block,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
        )
        if h % patch_size or w % patch_size:
            raise ConfigError(
                f"image size {h}x{w} is not divisible by model.patch_size={patch_size}; "
                f"pad the images (config.data.pad_to) or choose another patch size"
            )
        num_tokens = (h // patch_size) * (w // patch_size)
        if num_tokens < 2:
            raise ConfigError(
                f"model.patch_size={patch_size} makes {num_tokens} token of a {h}x{w} image; "
                f"an autoregressive flow needs at least 2 tokens"
            )
        if width % num_heads:
            raise ConfigError(
                f"model.width={width} is not divisible by model.num_heads={num_heads}"
            )
        if guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ConfigError(
                f"model.guidance_schedule must be one of {list(GUIDANCE_SCHEDULES)}, "
                f"got {guidance_schedule!r}"
            )
        _check_choice("guidance_on", guidance_on, GUIDANCE_TARGETS)
        _check_choice("null_label", null_label, NULL_LABELS)
        _check_bools(
            nvp=nvp,
            context_bias=context_bias,
            final_norm=final_norm,
            gelu_approximate=gelu_approximate,
            sampling_variance=sampling_variance,
        )
        _check_positive_number("guidance_attention_temperature", guidance_attention_temperature)
        _check_positive_number("norm_epsilon", norm_epsilon)
        check_backprop(backprop, BACKPROP_MODES, "TarFlow")
        self.patch_size = patch_size
        self.num_tokens = num_tokens
        self.token_features = patch_size * patch_size * c
        self.num_blocks = num_blocks
        self.guidance_schedule = guidance_schedule
        self.guidance_on = guidance_on
        self.guidance_attention_temperature = float(guidance_attention_temperature)
        self.null_label = null_label
        if sampling_variance:  # ml-tarflow's ``var``: set by flows.convert
            self.latent_variance = Buffer(jnp.ones(self.image_shape, jnp.float32))
        else:
            self.latent_variance = None
        # x in [0, 1) -> 2x - 1 in [-1, 1): log|det| = D log 2, counted here.
        self.preprocess = Chain([Scale(2.0), Shift(-1.0)])
        self.patchify = Patchify(self.image_shape, patch_size)
        self.blocks = StepStack(
            lambda r: TarFlowBlock(
                self.token_features,
                num_tokens,
                width=width,
                depth=layers_per_block,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                context_features=num_classes,
                matmul_impl=self.matmul_impl,
                compute_dtype=self.compute_dtype,
                nvp=nvp,
                final_norm=final_norm,
                norm_epsilon=float(norm_epsilon),
                gelu_approximate=gelu_approximate,
                context_bias=context_bias,
                rngs=r,
            ),
            num_blocks,
            rngs=rngs,
            backprop=backprop,
        )

    # -- token order ----------------------------------------------------------------------
    def _to_image_order(self, tokens):
        """Each block reverses the tokens: after an odd number of blocks, reverse back."""
        return tokens[:, ::-1] if self.num_blocks % 2 else tokens

    # -- conditioning ---------------------------------------------------------------------
    def context_features(self, labels):
        """One-hot labels or class weights (``DensityModel``); with ``null_label='mean'``
        mapped to ``w + (1 - sum w) / N`` (module docstring)."""
        ctx = super().context_features(labels)
        if ctx is None or self.null_label == "zero":
            return ctx
        return ctx + (1 - jnp.sum(ctx, axis=-1, keepdims=True)) / self.num_classes

    # -- the bijection --------------------------------------------------------------------
    def forward_and_log_det(self, x, *, context=None):
        """x in [0, 1)^D -> (standard-normal latents of the image's shape, log|det|)."""
        self.check_images(x)
        ctx = self.context_features(context)
        y, log_det = self.preprocess.forward_and_log_det(x)
        tokens, ld = self.blocks.forward_and_log_det(self.patchify.forward(y), context=ctx)
        z = self.patchify.inverse(self._to_image_order(tokens))
        return z, log_det + ld

    def inverse_and_log_det(self, latents, *, context=None):
        ctx = self.context_features(context)
        tokens = self._to_image_order(self.patchify.forward(latents))
        tokens, ld = self.blocks.inverse_and_log_det(tokens, context=ctx)
        x, ld_pre = self.preprocess.inverse_and_log_det(self.patchify.inverse(tokens))
        return x, ld + ld_pre

    def guided_inverse(self, latents, *, context, guidance: float):
        """The inverse with classifier-free guidance weight ``guidance`` (module docstring):
        every block decodes the labelled and the null-context branch in one loop."""
        ctx = self.context_features(context)
        dtype = jnp.result_type(ctx.dtype, latents.dtype)  # the mean embedding in float64 too
        null = self.context_features(self.null_context(latents.shape[0]).astype(dtype))
        ctx = ctx.astype(dtype)
        weights = guidance_weights(guidance, self.num_tokens, self.guidance_schedule, dtype)
        tokens = self._to_image_order(self.patchify.forward(latents))
        options = {
            "weights": weights,
            "guidance_on": self.guidance_on,
            "attention_temperature": self.guidance_attention_temperature,
        }
        tokens, _ = self.blocks.scan(
            lambda s, h, c: s.guided_inverse_and_log_det(h, context=c, **options),
            tokens,
            (ctx, null),
            True,
        )
        x = self.patchify.inverse(tokens)
        return self.preprocess.inverse(x)

    def initialize(self, x, *, context=None) -> None:
        """No data-dependent initialisation (zero-initialised outputs start at the identity)."""
        self.check_images(x)

    def sample_latents(self, key, num: int, temperature: float = 1.0):
        """``T * N(0, I)``, times ``sqrt(latent_variance)`` when the model keeps one."""
        eps = temperature * jax.random.normal(key, (num, *self.image_shape))
        if self.latent_variance is None:
            return eps
        return eps * jnp.sqrt(self.latent_variance[...]).astype(eps.dtype)

    @classmethod
    def describe_config(cls, m) -> str:
        """E.g. ``tarflow p2 w128 4x2 h2 cond``."""
        text = (
            f"tarflow p{m['patch_size']} w{m['width']} {m['num_blocks']}x"
            f"{m['layers_per_block']} h{m['num_heads']}"
        )
        if not m.get("nvp", True):
            text += " vp"
        if m.get("conditional"):
            text += " cond"
            if m.get("guidance_schedule", "constant") != "constant":
                text += f" ({m['guidance_schedule']} guidance)"
        return text


def _check_choice(field: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"model.{field} must be one of {list(choices)}, got {value!r}")


def _check_bools(**fields) -> None:
    for field, value in fields.items():
        if not isinstance(value, bool):
            raise ConfigError(f"model.{field} must be True or False, got {value!r}")


def _check_positive_number(field: str, value) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        raise ConfigError(f"model.{field} must be a finite number > 0, got {value!r}")


__all__ = ["TarFlow", "TarFlowBlock", "guidance_weights", "guided_shift_and_log_scale"]
