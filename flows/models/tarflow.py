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
``inverse_with_sampler`` can invert any block by Jacobi updates instead (all of its tokens,
or chunks of them, updated in parallel from the previous iterate until they stop moving:
``TarFlowBlock.jacobi_decode``, ``flows.models.jacobi``), chosen per block; ``choose_sampler``
(``'auto'``) measures which is faster for each block on the batch and backend at hand.

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
``TarFlowBlock.guided_mu_alpha`` is the one place the two branches are combined; the
sequential and Jacobi decoders and the guided forward map all call it.

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

The guided sampler is itself an exact flow: the guided ``(mu_t, alpha_t)`` still depend on
``x_{<t}`` only, so each guided block is triangular with log|det| ``-sum alpha``, and its
forward map runs in one parallel pass (both branches as a batch of 2B):

    log p_w(x | y) = log N(z_w; 0, I) + sum_blocks log|det_w| + D log 2

(``guided_forward_and_log_det``; ``DensityModel.guided_log_prob``), the density of guided
samples at temperature 1; at w = 0 the conditional density.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from flows.bijectors import Bijector, Buffer, Chain, Patchify, Scale, Shift
from flows.errors import ConfigError
from flows.models.base import DensityModel, is_guided
from flows.models.jacobi import Sampler, best_time, choose_methods, solve_autoregressive
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
    preserving, log-det 0). ``guidance_on`` and ``attention_temperature``: what guidance
    extrapolates and the unconditional branch's attention temperature (``TarFlow``'s
    ``guidance_on`` and ``guidance_attention_temperature``). ``network``:
    ``flows.nn.transformer.Transformer``'s options (``final_norm``, ``norm_epsilon``,
    ``gelu_approximate``, ``context_bias``, ``compute_dtype``).
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
        guidance_on: str = "both",
        attention_temperature: float = 1.0,
        rngs: nnx.Rngs,
        **network,
    ):
        self.features = features
        self.num_tokens = num_tokens
        self.nvp = bool(nvp)
        self.guidance_on = guidance_on
        self.attention_temperature = float(attention_temperature)
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

    def guided_inverse_and_log_det(self, z, *, context, weights):
        """The inverse with classifier-free guidance: ``context = (labels' features, null
        features)``, ``weights`` (T - 1,) the guidance weight of each predicted token."""
        return self.decode(z[:, ::-1], context, weights=weights)

    def _branch_temperatures(self, batch: int, dtype):
        """The attention temperature of each row of a guided batch of 2B (1 for the
        labelled branch, ``attention_temperature`` for the null one), or None when 1."""
        if self.attention_temperature == 1.0:
            return None
        return jnp.concatenate(
            [jnp.ones((batch,), dtype), jnp.full((batch,), self.attention_temperature, dtype)]
        )

    def decode(self, z, context, weights=None):
        """Token-by-token inverse of the autoregressive map (tokens in this block's order).

        ``weights`` None: plain inverse under ``context``. Otherwise ``context`` is a pair
        ``(cond, null)`` and each step runs both branches as one batch of 2B (the null
        branch's attention logits divided by ``attention_temperature``) and combines them
        with ``guided_mu_alpha``; the log-det is then that of the guided map."""
        b, t_max, _ = z.shape
        guided = weights is not None
        ctx = jnp.concatenate(context, axis=0) if guided else context
        temperature = self._branch_temperatures(b, z.dtype) if guided else None
        cache = self.net.init_cache(2 * b if guided else b, z.dtype)

        def body(t, carry):
            x, cache, log_det = carry
            x_t = jax.lax.dynamic_slice_in_dim(x, t, 1, axis=1)
            if guided:
                x_t = jnp.concatenate([x_t, x_t], axis=0)
            out, cache = self.net.decode_step(x_t, t, cache, ctx, temperature)
            w = jax.lax.dynamic_slice_in_dim(weights, t, 1) if guided else None
            mu, alpha = self.guided_mu_alpha(out, w)
            z_next = jax.lax.dynamic_slice_in_dim(z, t + 1, 1, axis=1)
            x_next = z_next * jnp.exp(alpha) + mu
            x = jax.lax.dynamic_update_slice_in_dim(x, x_next, t + 1, axis=1)
            return x, cache, log_det + jnp.sum(alpha, axis=(1, 2))

        init = (z, cache, jnp.zeros((b,), z.dtype))
        x, _, log_det = jax.lax.fori_loop(0, t_max - 1, body, init)
        return x, log_det

    def guided_mu_alpha(self, out, weights=None):
        """The shift and log-scale ``(mu, alpha)`` of the tokens predicted by the network's
        outputs ``out`` (..., n, 2d or d): ``_split``. With guidance, ``out`` is (2B, n, .),
        the labelled branch's rows over the null branch's, ``weights`` (n,) the weight of
        each predicted token, and ``guided_shift_and_log_scale`` extrapolates
        ``(1 + w_t) f(. | y) - w_t f(. | none)`` on the targets of ``guidance_on``.
        The one place guidance acts: the sequential decoder, the Jacobi decoder and the
        guided forward map (``guided_forward_and_log_det``) all call it."""
        mu, alpha = self._split(out)
        if weights is None:
            return mu, alpha
        w = weights.astype(out.dtype)[:, None]
        return guided_shift_and_log_scale(mu, alpha, out.shape[0] // 2, w, self.guidance_on)

    def guided_forward_and_log_det(self, x, *, context, weights):
        """The forward map of the guided block: ``z_t = (x_t - mu_t) exp(-alpha_t)`` with the
        guided ``(mu_t, alpha_t)`` of ``guided_mu_alpha`` (they depend on ``x_{<t}`` only,
        so the map is triangular and ``decode(z, context, weights)`` inverts it), then the
        reversal; ``context = (labels' features, null features)``, ``weights`` (T - 1,).
        Both branches run in one parallel pass over the tokens (a batch of 2B)."""
        cond, null = context
        temperature = self._branch_temperatures(x.shape[0], x.dtype)
        out = self.net(jnp.concatenate([x, x]), jnp.concatenate([cond, null]), temperature)
        mu, alpha = self.guided_mu_alpha(out[:, :-1], weights)  # tokens 1 .. T-1
        first = jnp.zeros_like(x[:, :1])
        mu, alpha = jnp.concatenate([first, mu], 1), jnp.concatenate([first, alpha], 1)
        z = (x - mu) * jnp.exp(-alpha)
        return z[:, ::-1], -jnp.sum(alpha, axis=(1, 2))

    def jacobi_decode(self, z, context, weights=None, *, tol, max_iters=None, chunk=None):
        """The inverse by Jacobi updates (``flows.models.jacobi.solve_autoregressive``) in
        chunks of ``chunk`` tokens (None: all T; at most T), each chunk's network pass
        reading the tokens before it from a key/value cache (``Transformer.decode_chunk``).
        ``context`` and ``weights`` as in ``decode``. Returns ``(x, log|det|, updates,
        converged)``."""
        b, t_max, _ = z.shape
        guided = weights is not None
        ctx = jnp.concatenate(context, axis=0) if guided else context
        temperature = self._branch_temperatures(b, z.dtype) if guided else None
        cache = self.net.init_cache(2 * b if guided else b, z.dtype)
        chunk = t_max if chunk is None else min(chunk, t_max)
        if guided:  # position t predicts token t + 1; the last position predicts none
            weights = jnp.concatenate([weights, weights[-1:]])

        def predict(x_chunk, s, cache):
            if guided:
                x_chunk = jnp.concatenate([x_chunk, x_chunk], axis=0)
            out, cache = self.net.decode_chunk(x_chunk, s, cache, ctx, temperature)
            w = jax.lax.dynamic_slice_in_dim(weights, s, chunk) if guided else None
            return (*self.guided_mu_alpha(out, w), cache)

        return solve_autoregressive(predict, z, cache, chunk=chunk, tol=tol, max_iters=max_iters)


@functools.partial(jax.jit, static_argnames=("graphdef", "method", "sampler", "guided"))
def _decode_block(graphdef, state, k, h, context, guidance, *, method, sampler, guided):
    """Block ``k`` (traced) of the model ``nnx.merge(graphdef, state)`` inverted alone by
    ``method`` on the tokens ``h`` it receives in sampling: ``(its output, Jacobi updates)``
    (what ``choose_sampler`` times; a pure function, so a call costs no module traversal)."""
    model = nnx.merge(graphdef, state)
    contexts, weights = model._decoding_inputs(context, h.shape[0], guidance if guided else 0.0)
    block_graphdef, blocks = nnx.split(model.blocks.steps)
    block = nnx.merge(block_graphdef, jax.tree.map(lambda v: v[k], blocks))
    if method == "jacobi":
        x, _, updates, _ = block.jacobi_decode(
            h[:, ::-1], contexts, weights, tol=sampler.tol, max_iters=sampler.max_iters,
            chunk=sampler.chunk,
        )  # fmt: skip
        return x, updates
    return block.decode(h[:, ::-1], contexts, weights)[0], jnp.int32(0)


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
        self.compute_dtype, self.compute_dtype_reason = resolve_compute_dtype(compute_dtype)
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
                guidance_on=guidance_on,
                attention_temperature=guidance_attention_temperature,
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
        contexts, weights = self._guidance_inputs(
            context, latents.shape[0], guidance, latents.dtype
        )
        tokens = self._to_image_order(self.patchify.forward(latents))
        tokens, _ = self.blocks.scan(
            lambda s, h, c: s.guided_inverse_and_log_det(h, context=c, weights=weights),
            tokens,
            contexts,
            True,
        )
        x = self.patchify.inverse(tokens)
        return self.preprocess.inverse(x)

    # -- the guided model as a density, and the samplers --------------------------------
    def _guidance_inputs(self, context, batch: int, guidance, dtype=None):
        """What guided blocks take: the contexts ``(labels' features, null features)`` (the
        null one through ``context_features`` too: the mean class embedding for
        ``null_label='mean'``) and the weight of each predicted token
        (``guidance_weights``), in ``dtype`` (None: the context's) so that float64 stays
        float64; ``guidance`` may be traced."""
        ctx = self.context_features(context)
        dtype = jnp.result_type(ctx.dtype, dtype or ctx.dtype)
        null = self.context_features(self.null_context(batch).astype(dtype))
        weights = guidance_weights(guidance, self.num_tokens, self.guidance_schedule, dtype)
        return (ctx.astype(dtype), null), weights

    def _decoding_inputs(self, context, batch: int, guidance, dtype=None):
        """``(context, weights)`` for the blocks' decoders: ``_guidance_inputs`` when
        ``is_guided(guidance)``, else the context's features and no weights."""
        if is_guided(guidance):
            return self._guidance_inputs(context, batch, guidance, dtype)
        return self.context_features(context), None

    def guided_forward_and_log_det(self, x, *, context, guidance):
        """x in [0, 1)^D -> the latents of the guided model and its log|det|: every block's
        forward map with the guided ``(mu, alpha)`` of sampling
        (``TarFlowBlock.guided_forward_and_log_det``), the exact inverse of
        ``guided_inverse``; so ``log N(z; 0, I) + log|det|`` is the density of guided samples
        at temperature 1 (``DensityModel.guided_log_prob``). At w = 0 it is
        ``forward_and_log_det``."""
        self.check_images(x)
        contexts, weights = self._guidance_inputs(context, x.shape[0], guidance, x.dtype)
        y, log_det = self.preprocess.forward_and_log_det(x)
        tokens, ld = self.blocks.scan(
            lambda s, h, c: s.guided_forward_and_log_det(h, context=c, weights=weights),
            self.patchify.forward(y),
            contexts,
            False,
        )
        z = self.patchify.inverse(self._to_image_order(tokens))
        return z, log_det + ld

    def guided_inverse_and_log_det(self, latents, *, context, guidance):
        """``guided_inverse`` with its log|det| (the inverse of ``guided_forward_and_log_det``)."""
        x, log_det, _ = self.inverse_with_sampler(
            latents, context=context, guidance=guidance, sampler=Sampler()
        )
        return x, log_det

    def inverse_with_sampler(self, latents, *, context=None, guidance=0.0, sampler=None):
        """The inverse (guided when ``guidance`` is traced or non-zero), each block by the
        method ``sampler`` (a ``flows.models.jacobi.Sampler``; None: sequential) gives it:
        ``'sequential'`` (``TarFlowBlock.decode``) or ``'jacobi'``
        (``TarFlowBlock.jacobi_decode``), in the one ``lax.scan`` over the blocks (a
        ``lax.cond`` per block when they differ). Returns ``(x, log|det|, stats)``, stats
        ``{'updates': (num_blocks,) int32, 'converged': (num_blocks,) bool}`` in block order
        (Jacobi updates summed over a block's chunks; 0 and True for a sequential block)."""
        sampler = sampler or Sampler()
        contexts, weights = self._decoding_inputs(
            context, latents.shape[0], guidance, latents.dtype
        )
        methods = sampler.block_methods(self.num_blocks)
        options = {"tol": sampler.tol, "max_iters": sampler.max_iters, "chunk": sampler.chunk}

        def sequential(block, z, c):
            x, log_det = block.decode(z, c, weights)
            return x, log_det, jnp.int32(0), jnp.bool_(True)

        def jacobi(block, z, c):
            return block.jacobi_decode(z, c, weights, **options)

        def apply(block, h, c, use_jacobi):
            z = h[:, ::-1]  # each block reversed its tokens at its end
            if len(set(methods)) == 1:
                x, *out = (jacobi if methods[0] == "jacobi" else sequential)(block, z, c)
            else:
                x, *out = jax.lax.cond(
                    use_jacobi, lambda z: jacobi(block, z, c), lambda z: sequential(block, z, c), z
                )
            return x, tuple(out)

        tokens = self._to_image_order(self.patchify.forward(latents))
        flags = jnp.asarray([m == "jacobi" for m in methods])
        tokens, (ld, updates, converged) = self.blocks.map_steps(
            apply, tokens, contexts, flags, reverse=True
        )
        x, ld_pre = self.preprocess.inverse_and_log_det(self.patchify.inverse(tokens))
        return x, jnp.sum(ld, axis=0) + ld_pre, {"updates": updates, "converged": converged}

    def choose_sampler(self, latents, *, context=None, guidance=0.0, sampler):
        """``'auto'``: ``sampler`` (its Jacobi options) with the faster method for each block
        on these latents, this batch and this backend, and the reason
        (``flows.models.jacobi.choose_methods``). Measured (``best_time``; both programs
        compiled ahead of time, the block index traced, so no call is spent compiling):
        one block decoded sequentially (every block costs the same), then every block by
        Jacobi in sampling order, each on the previous block's Jacobi output."""
        graphdef, state = nnx.split(self)
        if context is not None:
            context = self.context_features(context)  # checked here, concrete
        guided = is_guided(guidance)

        tokens = self._to_image_order(self.patchify.forward(latents))
        last = jnp.int32(self.num_blocks - 1)

        def compiled(method):  # ahead of time: no untimed call; the block index is traced
            return _decode_block.lower(
                graphdef, state, last, tokens, context, guidance,
                method=method, sampler=sampler, guided=guided,
            ).compile()  # fmt: skip

        sequential, jacobi = compiled("sequential"), compiled("jacobi")
        _, sequential_s = best_time(lambda: sequential(state, last, tokens, context, guidance))
        jacobi_s, updates = [0.0] * self.num_blocks, [0] * self.num_blocks
        for k in reversed(range(self.num_blocks)):
            index = jnp.int32(k)
            (tokens, n), jacobi_s[k] = best_time(
                lambda i=index, h=tokens: jacobi(state, i, h, context, guidance)
            )
            updates[k] = int(n)
        methods, reason = choose_methods(
            sequential_s, jacobi_s, updates, backend=jax.default_backend(), batch=len(latents)
        )
        return dataclasses.replace(sampler, methods=methods, reason=reason)

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
