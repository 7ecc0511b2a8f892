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
Classifier-free guidance (``guided_inverse``): per token, ``mu = (1 + w_t) mu(y) - w_t
mu(none)`` and the same for ``alpha``; both branches run in the same decoding loop (the batch
concatenated with the null-context batch) and both caches are fed the guided tokens. The
weight is ``w_t = w`` (``guidance_schedule='constant'``) or grows linearly over the tokens,
``w_t = w (t + 1) / (T - 1)`` for token t + 1 (``'linear'``, the paper's annealed guidance).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flows.bijectors import Bijector, Chain, Patchify, Scale, Shift
from flows.errors import ConfigError
from flows.models.base import DensityModel
from flows.models.registry import check_positive_ints, register_model
from flows.models.steps import StepStack, check_backprop
from flows.nn.backend import resolve_matmul_impl
from flows.nn.transformer import Transformer

GUIDANCE_SCHEDULES = ("constant", "linear")
# TarFlow's names of flows.models.steps.BACKPROP, its default first.
BACKPROP_MODES = ("save_dots", "checkpoint", "autodiff")


def guidance_weights(guidance, num_tokens: int, schedule: str):
    """Guidance weight per predicted token ``t + 1`` for ``t = 0 .. T-2``: shape (T - 1,)."""
    steps = max(num_tokens - 1, 1)
    if schedule == "constant":
        return jnp.full((num_tokens - 1,), guidance, jnp.float32)
    if schedule == "linear":
        return guidance * jnp.arange(1, num_tokens, dtype=jnp.float32) / steps
    raise ConfigError(
        f"guidance_schedule must be one of {list(GUIDANCE_SCHEDULES)}, got {schedule!r}"
    )


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
    reversal).
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
        rngs: nnx.Rngs,
    ):
        self.features = features
        self.num_tokens = num_tokens
        self.net = Transformer(
            features,
            2 * features,
            num_tokens=num_tokens,
            width=width,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            causal=True,
            context_features=context_features,
            matmul_impl=matmul_impl,
            rngs=rngs,
        )

    def _shift_and_log_scale(self, x, context):
        out = self.net(x, context)
        out = jnp.concatenate([jnp.zeros_like(out[:, :1]), out[:, :-1]], axis=1)
        return out[..., : self.features], out[..., self.features :]

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

    def decode(self, z, context, weights=None):
        """Token-by-token inverse of the autoregressive map (tokens in this block's order).

        ``weights`` None: plain inverse under ``context``. Otherwise ``context`` is a pair
        ``(cond, null)`` and each step runs both branches as one batch of 2B and combines
        ``(1 + w_t) f(cond) - w_t f(null)``; the log-det is then that of the guided map."""
        b, t_max, d = z.shape
        guided = weights is not None
        if guided:
            cond, null = context
            ctx = jnp.concatenate([cond, null], axis=0)
        else:
            ctx = context
        cache = self.net.init_cache(2 * b if guided else b, z.dtype)

        def body(t, carry):
            x, cache, log_det = carry
            x_t = jax.lax.dynamic_slice_in_dim(x, t, 1, axis=1)
            if guided:
                x_t = jnp.concatenate([x_t, x_t], axis=0)
            out, cache = self.net.decode_step(x_t, t, cache, ctx)
            mu, alpha = out[..., :d], out[..., d:]
            if guided:
                w = weights[t].astype(out.dtype)
                mu = (1 + w) * mu[:b] - w * mu[b:]
                alpha = (1 + w) * alpha[:b] - w * alpha[b:]
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
      backprop: how the block stack is differentiated, one of ``BACKPROP_MODES``:
        ``'save_dots'`` (the fastest on XLA:CPU), ``'checkpoint'`` or ``'autodiff'``; the
        same gradients (the names' meanings: ``flows.models.steps``).
      matmul_impl: the transformers' row products, ``'auto'`` (default), ``'gemm'`` or
        ``'lax'`` (``flows.nn.backend.resolve_matmul_impl``; ``'lax'`` for ``jax.jvp``).
        ``self.matmul_impl`` / ``self.matmul_impl_reason`` hold the resolved choice.
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
        backprop: str = "save_dots",
        matmul_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        super().__init__(image_shape, num_classes)
        self.matmul_impl, self.matmul_impl_reason = resolve_matmul_impl(matmul_impl)
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
        check_backprop(backprop, BACKPROP_MODES, "TarFlow")
        self.patch_size = patch_size
        self.num_tokens = num_tokens
        self.token_features = patch_size * patch_size * c
        self.num_blocks = num_blocks
        self.guidance_schedule = guidance_schedule
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
        null = self.null_context(latents.shape[0]).astype(ctx.dtype)
        weights = guidance_weights(guidance, self.num_tokens, self.guidance_schedule)
        tokens = self._to_image_order(self.patchify.forward(latents))
        tokens, _ = self.blocks.scan(
            lambda s, h, c: s.guided_inverse_and_log_det(h, context=c, weights=weights),
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
        return temperature * jax.random.normal(key, (num, *self.image_shape))

    @classmethod
    def describe_config(cls, m) -> str:
        """E.g. ``tarflow p2 w128 4x2 h2 cond``."""
        text = (
            f"tarflow p{m['patch_size']} w{m['width']} {m['num_blocks']}x"
            f"{m['layers_per_block']} h{m['num_heads']}"
        )
        if m.get("conditional"):
            text += " cond"
            if m.get("guidance_schedule", "constant") != "constant":
                text += f" ({m['guidance_schedule']} guidance)"
        return text


__all__ = ["TarFlow", "TarFlowBlock", "guidance_weights"]
