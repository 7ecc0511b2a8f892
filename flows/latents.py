"""Latent-space tools for any model with an inverse: encode, round trip, interpolate, move
along a class direction, swap the label.

Everything goes through the ``DensityModel`` interface only (``flows/models/base.py``):
``forward_and_log_det(x, context=...)`` gives the latents, any pytree whose leaves have the
batch on axis 0, and ``inverse_and_log_det(latents, context=...)`` maps them back. A family
whose inverse is not implemented gets a ``ConfigError`` saying so.

Which x is encoded: the mid-cell dequantization ``x = (v + 1/2) / K`` of the integer image
``v`` (``MID_CELL``): deterministic, and the centre of the cell ``[v/K, (v+1)/K)`` that uniform
dequantization spreads ``v`` over. A round trip ``f^-1(f(x))`` then quantizes back to ``v``
(``flows.likelihood.quantize``) whenever its error stays below half a cell, ``1 / (2K)``, in
every value; ``encode_split`` measures both the error and whether it does.

Decoded images are continuous; ``decode_levels`` quantizes them for display and flags the
non-finite ones (latents far from the data can overflow an inverse). Every compiled
function is cached per model structure and runs on batches of one fixed size (the last one
padded), so a session compiles the round trip once and the decoder once.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flows.errors import ConfigError
from flows.evaluation import padded_batches, padded_indices
from flows.likelihood import dequantize_with_noise, quantize
from flows.models.base import is_conditional

MID_CELL = "mid-cell x = (v + 0.5) / K"


def mid_cell(images, num_bins: int) -> jax.Array:
    """``x = (v + 1/2) / K`` in float32: uniform dequantization with the noise fixed at the
    centre of its range (``flows.likelihood.dequantize_with_noise`` with ``u = 1/2``)."""
    return dequantize_with_noise(jnp.asarray(images), jnp.float32(0.5), num_bins)


# -- batching of pytrees ---------------------------------------------------------------------


def num_examples(latents) -> int:
    """The batch size of a latents pytree (axis 0 of its leaves)."""
    return int(jax.tree.leaves(latents)[0].shape[0])


def take(latents, indices):
    """The examples ``indices`` of every leaf (numpy indexing on axis 0)."""
    return jax.tree.map(lambda z: np.asarray(z)[np.asarray(indices)], latents)


def _concat(chunks):
    """Leafwise concatenation of a list of pytrees along axis 0 (numpy)."""
    return jax.tree.map(lambda *zs: np.concatenate(zs), *chunks)


def _no_inverse(model, error: NotImplementedError) -> ConfigError:
    return ConfigError(
        f"the model family {type(model).__name__} has no inverse "
        f"({str(error) or 'inverse_and_log_det'} is not implemented): the latent tools need one"
    )


# -- compiled functions (one per model structure) ------------------------------------------


@functools.lru_cache(maxsize=16)
def _round_trip_fn(graphdef, num_bins: int, conditional: bool):
    """``(latents, per-example max |x - f^-1(f(x))|, per-example exact)`` of a batch of
    integer images at the mid-cell ``x``; exact: ``quantize(f^-1(f(x))) == v`` everywhere."""

    @jax.jit
    def round_trip(state, images, labels):
        m = nnx.merge(graphdef, state)
        context = labels if conditional else None
        x = mid_cell(images, num_bins)
        latents, _ = m.forward_and_log_det(x, context=context)
        x_back, _ = m.inverse_and_log_det(latents, context=context)
        axes = tuple(range(1, x.ndim))
        error = jnp.max(jnp.abs(x - x_back), axis=axes)
        exact = jnp.all(quantize(x_back, num_bins) == images, axis=axes)
        return latents, error, exact

    return round_trip


@functools.lru_cache(maxsize=16)
def _decode_fn(graphdef, conditional: bool):
    """``f^-1(latents)`` (continuous x) of one batch, under the class weights ``context``
    when conditional."""

    @jax.jit
    def decode_batch(state, latents, context):
        m = nnx.merge(graphdef, state)
        return m.inverse_and_log_det(latents, context=context if conditional else None)[0]

    return decode_batch


# -- encoding a split ------------------------------------------------------------------------


@dataclasses.dataclass
class EncodedSplit:
    """A split encoded at its mid-cell x, with the round trip measured per example.

    Attributes:
      latents: the model's latents pytree, numpy leaves with the N examples on axis 0.
      labels: (N,) the labels; the context of the encoding for a conditional model.
      max_abs_error: (N,) ``max |x - f^-1(f(x))|`` over the values of each example (unit
        scale, the x of ``MID_CELL``).
      exact: (N,) whether ``quantize(f^-1(f(x)))`` equals the image ``v`` in every value.
      num_bins: K; name: the split's provenance (``ImageData.name``).
    """

    latents: object
    labels: np.ndarray
    max_abs_error: np.ndarray
    exact: np.ndarray
    num_bins: int
    name: str

    def reconstruction(self) -> dict:
        """The round trip over the split: ``reconstruction_max_abs_error`` (the maximum over
        examples and values of ``|x - f^-1(f(x))|``, unit scale), the same in levels
        (times K), ``exact_reconstruction_fraction`` (of images quantized back to v), and
        ``dtype``, that of the latents (the arithmetic of the round trip)."""
        error = float(np.max(self.max_abs_error))
        return {
            "encoded_x": MID_CELL,
            "dtype": str(jax.tree.leaves(self.latents)[0].dtype),
            "reconstruction_max_abs_error": error,
            "reconstruction_max_abs_error_levels": error * self.num_bins,
            "num_exact_reconstructions": int(np.sum(self.exact)),
            "exact_reconstruction_fraction": float(np.mean(self.exact)),
        }


def encode_split(model, data, *, batch_size: int, progress=None) -> EncodedSplit:
    """Encodes every image of ``data`` (a split: ``ImageData`` or ``StreamedSplit``, read
    batch by batch) at ``x = (v + 1/2) / K`` (a conditional model under the image's true
    label) and decodes it back, measuring the error of the round trip. Batches of
    ``batch_size``, compiled once; ``progress(n)`` after each."""
    graphdef, state = nnx.split(model)
    fn = _round_trip_fn(graphdef, int(data.num_bins), is_conditional(model))
    n = data.num_examples
    batch_size = min(batch_size, n)
    chunks, errors, exact, all_labels = [], [], [], []
    for a, b, rows in padded_indices(n, batch_size):
        images, labels = data.read(rows)
        try:
            latents, error, ok = jax.device_get(fn(state, images, labels))
        except NotImplementedError as e:
            raise _no_inverse(model, e) from e
        chunks.append(take(latents, np.arange(b - a)))
        errors.append(error[: b - a])
        exact.append(ok[: b - a])
        all_labels.append(labels[: b - a])
        if progress is not None:
            progress(b - a)
    return EncodedSplit(
        latents=_concat(chunks),
        labels=np.concatenate(all_labels).astype(np.int32),
        max_abs_error=np.concatenate(errors),
        exact=np.concatenate(exact),
        num_bins=int(data.num_bins),
        name=data.name,
    )


def class_weights(labels, num_classes: int) -> np.ndarray:
    """Integer labels (N,) -> one-hot float32 class weights (N, num_classes), the form of
    context a conditional model also accepts; labels outside ``0..num_classes-1`` raise."""
    labels = np.asarray(labels)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ConfigError(f"label {bad[0]} is outside the model's classes 0..{num_classes - 1}")
    return np.eye(num_classes, dtype=np.float32)[labels]


def decode(model, latents, context=None, *, batch_size: int) -> np.ndarray:
    """``f^-1(latents)``: continuous images on the unit scale, shape (N, H, W, C).

    ``context`` (conditional models only; None otherwise) is integer labels (N,) or class
    weights (N, num_classes); labels are turned into one-hot weights (``class_weights``:
    the same context). Batches are always ``batch_size`` (the last one, or a single short
    one, padded), so that every decode of a session runs one compiled program.
    """
    n = num_examples(latents)
    if is_conditional(model):
        if context is None or len(context) != n:
            raise ValueError(f"a conditional model decodes under one context per latent ({n})")
        context = np.asarray(context)
        if np.issubdtype(context.dtype, np.integer):
            context = class_weights(context, model.num_classes)
        context = context.astype(np.float32)
    elif context is not None:
        raise ValueError("this model is unconditional; do not pass context")
    else:
        context = np.zeros((n,), np.float32)  # a placeholder, ignored
    graphdef, state = nnx.split(model)
    fn = _decode_fn(graphdef, is_conditional(model))
    out = []
    for a, b, (z, y) in padded_batches((latents, context), n, batch_size):
        try:
            out.append(np.asarray(fn(state, z, y))[: b - a])
        except NotImplementedError as e:
            raise _no_inverse(model, e) from e
    return np.concatenate(out)


def decode_levels(model, latents, context=None, *, num_bins: int, batch_size: int):
    """``decode``, quantized for display: ``(levels, finite)``, the integer levels ``0..K-1``
    (``flows.likelihood.quantize``: ``floor(x K)``, clipped), shape (N, H, W, C), and whether
    each decoded image is finite, shape (N,).

    Latents far from the data can overflow the inverse (an affine coupling's inverse divides
    by its scale, ``sigmoid(a)``, and a few such steps in a row compound: inf, then NaN).
    Such an image has no levels; its are set to 0, and ``finite`` is False there.
    """
    x = decode(model, latents, context, batch_size=batch_size)
    finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
    x = np.where(finite.reshape(-1, *([1] * (x.ndim - 1))), x, 0.0)
    return np.asarray(quantize(jnp.asarray(x), num_bins)), finite


# -- manipulations of latents ---------------------------------------------------------------


def interpolation_times(num_steps: int) -> np.ndarray:
    """``num_steps`` evenly spaced t in [0, 1], both ends included."""
    if num_steps < 2:
        raise ConfigError(f"an interpolation needs at least 2 steps (t = 0 and 1), got {num_steps}")
    return np.linspace(0.0, 1.0, num_steps)


def interpolate(z0, z1, num_steps: int):
    """Linear interpolation ``z(t) = (1 - t) z0 + t z1`` of every leaf, t = ``interpolation_times``.

    ``z0`` and ``z1`` are latents pytrees of P examples each (pairs ``(z0[p], z1[p])``); the
    result has ``P * num_steps`` examples, pair-major: example ``p * num_steps + s`` is pair
    p at ``t_s``. t = 0 and t = 1 are ``z0`` and ``z1`` themselves (bit for bit).

    Glow (Kingma & Dhariwal 2018, Sec. 6, Fig. 5) encoded two real images and decoded
    linear interpolations of their latents, showing a smooth image manifold; openai/glow's
    latents were the top-level z and the standardized eps of each split, all interpolated
    together. Here every leaf of whatever the model's ``forward_and_log_det`` returns is
    interpolated (for this repository's Glow: the standardized eps of every level, the top
    one included). Note that a linear path between two Gaussian latents passes through
    latents of smaller norm than either end (the midpoint of two independent standard
    normals has variance 1/2), i.e. towards the "temperature < 1" mode region.
    """
    t = interpolation_times(num_steps).astype(np.float32)

    def leaf(a, b):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        shape = (-1,) + (1,) * (a.ndim - 1)
        w = t.reshape(1, *shape)  # (1, S, 1, ...)
        path = (1 - w) * a[:, None] + w * b[:, None]  # (P, S, ...)
        path[:, 0], path[:, -1] = a, b  # exact ends, whatever the rounding of (1 - t)
        return path.reshape(-1, *a.shape[1:])

    return jax.tree.map(leaf, z0, z1)


def interpolate_labels(y0, y1, num_steps: int, num_classes: int) -> np.ndarray:
    """The context of ``interpolate``'s path for a conditional model: class weights
    ``(1 - t) onehot(y0) + t onehot(y1)``, shape (P * num_steps, num_classes), pair-major.

    Both ends are the images' own labels, so t = 0 and t = 1 decode to the two images'
    round trips; between them the label moves with the latent (a model's class embedding,
    a linear map of the one-hot context, is interpolated linearly). Two images of one
    class keep that class all along.
    """
    t = interpolation_times(num_steps).astype(np.float32)[None, :, None]
    e0, e1 = class_weights(y0, num_classes)[:, None], class_weights(y1, num_classes)[:, None]
    weights = (1 - t) * e0 + t * e1
    weights[:, 0], weights[:, -1] = e0[:, 0], e1[:, 0]
    return weights.reshape(-1, num_classes)


def class_mean(latents, labels, label: int):
    """The mean latent (every leaf) of the examples with ``labels == label``."""
    mask = np.asarray(labels) == label
    if not mask.any():
        raise ConfigError(f"class {label} has no example in the encoded split")
    return jax.tree.map(lambda z: np.asarray(z)[mask].mean(axis=0), latents)


def class_direction(latents, labels, a: int, b: int):
    """``d = mean(z | y = b) - mean(z | y = a)`` per leaf (one example's shape, no batch
    axis): the attribute direction of Glow's Sec. 6 (the difference of the mean latents of
    images with and without an attribute), here between two classes of the split."""
    mean_a, mean_b = class_mean(latents, labels, a), class_mean(latents, labels, b)
    return jax.tree.map(lambda za, zb: zb - za, mean_a, mean_b)


def tree_norm(tree) -> float:
    """The Euclidean norm of all the values of a pytree together."""
    squares = (np.sum(np.square(np.asarray(z, np.float64))) for z in jax.tree.leaves(tree))
    return float(np.sqrt(sum(squares)))


def shift_along(latents, direction, alphas):
    """``z_i + alpha_j d`` for every example i and slider value alpha_j: N * len(alphas)
    examples, example-major (example ``i * len(alphas) + j``). ``alpha = 0`` is ``z_i``."""
    alphas = np.asarray(alphas, np.float32)

    def leaf(z, d):
        z = np.asarray(z, np.float32)
        w = alphas.reshape(1, -1, *([1] * (z.ndim - 1)))
        shifted = z[:, None] + w * np.asarray(d, np.float32)[None, None]
        return shifted.reshape(-1, *z.shape[1:])

    return jax.tree.map(leaf, latents, direction)


def label_swap(latents, num_classes: int):
    """Every latent decoded under every label, the manipulation natural to ``p(x | y)``:
    returns ``(latents, labels)`` with N * num_classes examples, example-major (example
    ``i * num_classes + y`` is ``z_i`` with label y). The latent keeps what the label does not
    explain (the "style": slant, thickness, position); the label changes the class. Under the
    true label the decoded image is the example itself (up to the round trip)."""
    n = num_examples(latents)
    repeated = jax.tree.map(lambda z: np.repeat(np.asarray(z), num_classes, axis=0), latents)
    labels = np.tile(np.arange(num_classes, dtype=np.int32), n)
    return repeated, labels
