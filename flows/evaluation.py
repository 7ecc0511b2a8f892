"""Evaluation of image density models over a whole split, with provenance.

For a label-conditioned model it also reports the marginal
``log p(x) = logsumexp_y [log p(x|y) + log p(y)]`` (the number comparable with unconditional
models), and Bayes' rule ``p(y|x)`` as a classifier: accuracy and the NLL of the true label.

Bits/dim per example under the model's dequantization (uniform, or a learned ``q(u | v)``:
``DensityModel.dequantize`` returns ``x`` and ``log q(u | v)``) with ``num_samples`` noise
draws per example: k = 1 gives the variational bound (the ELBO)
``log p(x) - log q(u | v)``; k > 1 the importance-weighted bound
``log (1/k) sum_i p(x_i) / q(u_i | v)``, tighter. Reported as mean and standard error over
examples; the record names the dequantization and the bound.

The noise is a pure function of (key, example index, draw index): draw i of example n is
``uniform(fold_in(fold_in(key, n), i))`` (``dequantization_noise``; a variational dequantizer
maps it through its flow), so an evaluation is reproducible and its per-example numbers do
not depend on the batch size or on padding.

Sharded over every device (of every process; ``eval_devices``): each batch is split along a
1-D ``'data'`` mesh, the model's state replicated, and ``jax.shard_map`` runs the per-example
computation on each device's own slice only; the per-example outputs are gathered back
(replicated) so every process holds all of them. The batch is rounded up to a multiple of the
device count (the padding's outputs are dropped). In a multi-process run every process
iterates over the same batches and hands over its own rows (``flows.sharding``). Because the
noise is a function of the example's index, the per-example numbers are those of a
one-device evaluation.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from flows import sharding
from flows import workdir as wd
from flows.likelihood import (
    bits_per_dim,
    importance_weighted_log_prob,
    mean_and_standard_error,
)
from flows.models.base import is_conditional


def padded_indices(num_examples: int, batch_size: int):
    """``(a, b, rows)`` for consecutive batches ``a:b`` of ``num_examples`` examples, in
    order: ``rows`` is ``a, a+1, ..., b-1`` padded to ``batch_size`` entries with copies of
    ``b - 1`` (int64), so that a compiled function sees one shape (the caller drops the
    outputs past ``b - a``)."""
    for a in range(0, num_examples, batch_size):
        b = min(a + batch_size, num_examples)
        yield a, b, np.minimum(np.arange(a, a + batch_size), b - 1)


def padded_batches(tree, num_examples: int, batch_size: int):
    """``(a, b, rows)`` of ``padded_indices``, with ``rows`` those rows of every leaf of
    ``tree`` (axis 0, as numpy)."""
    for a, b, idx in padded_indices(num_examples, batch_size):
        yield a, b, jax.tree.map(lambda leaf, idx=idx: np.asarray(leaf)[idx], tree)


def read_batches(data, batch_size: int, mesh: Mesh):
    """``(a, b, images, labels, indices)`` per batch of ``batch_size`` examples of the split
    ``data`` (at most the split's size, rounded up to a multiple of ``mesh``'s device
    count), in order: the last one
    padded with copies of its last example, so the step compiles once; ``indices`` are the
    examples' positions in the split (the padding's run on past the end). The arrays are
    global arrays sharded over the mesh (``flows.sharding.shard_rows``), each process
    reading and supplying only its own rows."""
    batch_size = min(batch_size, data.num_examples)  # no batch padded past the split
    batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
    rows = sharding.process_slice(batch_size)
    for a, b, examples in padded_indices(data.num_examples, batch_size):
        indices = np.arange(a, a + batch_size, dtype=np.int32)
        images, labels = data.read(examples[rows])  # each process reads only its rows
        arrays = (images, labels.astype(np.int32), indices[rows])
        yield (a, b, *(sharding.shard_rows(x, mesh) for x in arrays))


def eval_devices() -> list:
    """The devices an evaluation is sharded over: every device of every process."""
    return jax.devices()


def eval_mesh() -> Mesh:
    """The mesh an evaluation is sharded over: ``flows.sharding.data_mesh`` of
    ``eval_devices()``."""
    return sharding.data_mesh(eval_devices())


def _sharded(fn, mesh: Mesh, num_outputs: int):
    """``fn(state, images, labels, indices, key)`` run by each device of ``mesh`` on its own
    slice of the batch (state and key replicated), jitted, with its outputs gathered to every
    device (replicated: readable by every process)."""
    data, rep = sharding.BATCH, sharding.REPLICATED
    mapped = jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(rep, data, data, data, rep),
        out_specs=(data,) * num_outputs,
        # The models' scans start their carries from fresh zeros (not marked as varying
        # over 'data'); nothing here reduces over the axis, so the check has nothing to find.
        check_vma=False,
    )
    return jax.jit(mapped, out_shardings=(sharding.replicated(mesh),) * num_outputs)


def dequantization_noise(key, example_indices, draw, shape) -> jax.Array:
    """The evaluation's noise ``u`` of draw ``draw`` for the examples ``example_indices``:
    ``uniform(fold_in(fold_in(key, n), draw))`` for example n, shape ``(len, *shape)``."""

    def one(n):
        k = jax.random.fold_in(jax.random.fold_in(key, n), draw)
        return jax.random.uniform(k, shape, jnp.float32)

    return jax.vmap(one)(example_indices)


def _over_draws(model, fn, images, indices, key, num_bins, num_samples):
    """``fn(x) - log q(u | v)`` for each of the ``num_samples`` dequantizations
    ``(x, log q) = model.dequantize(images, noise)`` of the batch, stacked on a new leading
    axis (one draw at a time, ``lax.map``); ``fn(x)`` is (B,) or (B, classes)."""

    def one_draw(draw):
        noise = dequantization_noise(key, indices, draw, images.shape[1:])
        x, log_q = model.dequantize(images, noise, num_bins)
        out = fn(x)
        return out - log_q.reshape(log_q.shape + (1,) * (out.ndim - 1))

    return jax.lax.map(one_draw, jnp.arange(num_samples))


def bound_name(num_samples: int) -> str:
    """The bound a k-draw evaluation reports."""
    if num_samples == 1:
        return "variational bound (ELBO, k=1)"
    return f"importance-weighted bound (k={num_samples})"


@functools.lru_cache(maxsize=16)
def batch_bits_per_dim_fn(
    graphdef, num_dims, num_bins, num_samples, conditional, mesh, guidance: float = 0.0
):
    """``fn(state, images, labels, indices, key) -> (bits/dim (B,),)`` of a batch of
    ``read_batches`` (``state``, ``key`` replicated: ``flows.sharding.replicate``), sharded
    over ``mesh``: what ``per_example_bits_per_dim`` runs per batch. One jitted function per
    model structure and mesh, so repeated evaluations compile once. ``guidance`` w > 0: of
    the guided model, ``-log2 p_w(x | y) / D`` (``DensityModel.guided_log_prob``)."""

    def batch_bpd(state, images, labels, indices, key):
        m = nnx.merge(graphdef, state)
        context = labels if conditional else None
        log_probs = _over_draws(
            m,
            lambda x: m.guided_log_prob(x, context=context, guidance=guidance),
            images,
            indices,
            key,
            num_bins,
            num_samples,
        )  # (k, B)
        return (bits_per_dim(importance_weighted_log_prob(log_probs), num_dims, num_bins),)

    return _sharded(batch_bpd, mesh, 1)


def per_example_bits_per_dim(
    model: nnx.Module,
    data,
    *,
    batch_size: int,
    key,
    num_samples: int = 1,
    progress=None,
    guidance: float = 0.0,
) -> np.ndarray:
    """Bits/dim of every example of ``data`` (a split: ``ImageData`` or ``StreamedSplit``),
    shape (N,): of p(x), or of p(x | y) for the examples' labels when conditional, or of the
    guided p_w(x | y) with ``guidance`` w > 0."""
    graphdef, state = nnx.split(model)
    mesh = eval_mesh()
    batch_bpd = batch_bits_per_dim_fn(
        graphdef,
        math.prod(data.image_shape),
        data.num_bins,
        num_samples,
        is_conditional(model),
        mesh,
        float(guidance),
    )
    state, key = sharding.replicate((state, key), mesh)
    out = np.empty((data.num_examples,), np.float64)
    for a, b, images, labels, indices in read_batches(data, batch_size, mesh):
        (bpd,) = batch_bpd(state, images, labels, indices, key)
        out[a:b] = np.asarray(bpd)[: b - a]
        if progress is not None:
            progress(b - a)
    return out


def evaluate_bits_per_dim(model, data, *, batch_size, key, num_samples=1, progress=None) -> dict:
    """Mean and standard error of bits/dim over the split, with the provenance fields."""
    bpd = per_example_bits_per_dim(
        model, data, batch_size=batch_size, key=key, num_samples=num_samples, progress=progress
    )
    return _bits_per_dim_record(model, data, bpd, num_samples)


def _bits_per_dim_record(model, data, bpd: np.ndarray, num_samples: int) -> dict:
    mean, se = mean_and_standard_error(bpd)
    return {
        "bits_per_dim": mean,
        "bits_per_dim_se": se,
        "split": data.name,
        "num_examples": int(data.num_examples),
        "num_bins": int(data.num_bins),
        "image_shape": list(data.image_shape),
        "dequantization": model.dequantizer.kind,
        "importance_samples": int(num_samples),
        "bound": bound_name(num_samples),
    }


@functools.lru_cache(maxsize=16)
def _batch_conditional_fn(graphdef, num_dims, num_bins, num_samples, mesh, guidance=0.0):
    """Per example: conditional bits/dim, marginal bits/dim, whether Bayes' rule picks the
    label, -log p(y|x) of the label, and the label itself (gathered, so that every process
    has the whole batch's: a process reads only its own rows); of the guided model's
    p_w(x | y) when ``guidance`` w > 0."""

    def batch_eval(state, images, labels, indices, key):
        m = nnx.merge(graphdef, state)
        per_draw = _over_draws(
            m,
            lambda x: m.class_log_likelihoods(x, guidance=guidance),
            images,
            indices,
            key,
            num_bins,
            num_samples,
        )  # (k, B, N)
        class_ll = importance_weighted_log_prob(per_draw)  # (B, N): log p(x|y), k-sample bound
        joint = class_ll + m.log_label_prior[...]
        marginal = jax.scipy.special.logsumexp(joint, axis=1)
        conditional = jnp.take_along_axis(class_ll, labels[:, None], axis=1)[:, 0]
        log_posterior = joint - marginal[:, None]
        return (
            bits_per_dim(conditional, num_dims, num_bins),
            bits_per_dim(marginal, num_dims, num_bins),
            jnp.argmax(log_posterior, axis=1) == labels,
            -jnp.take_along_axis(log_posterior, labels[:, None], axis=1)[:, 0],
            labels,
        )

    return _sharded(batch_eval, mesh, 5)


def per_example_conditional(
    model, data, *, batch_size: int, key, num_samples: int = 1, progress=None, guidance=0.0
) -> dict:
    """Per example of ``data``: ``bits_per_dim`` (of p(x|y)), ``marginal_bits_per_dim``,
    ``accuracy`` (1 where Bayes' rule picks the true label), ``label_nll_nats``
    (-log p(y|x)) and ``label`` (the label read), each an array of shape (N,). The labels
    come with the batches (``data.read``): no pass over the split's labels. ``guidance`` w
    > 0: all of the guided model, p_w(x | y) for every y in place of p(x | y)."""
    graphdef, state = nnx.split(model)
    mesh = eval_mesh()
    fn = _batch_conditional_fn(
        graphdef, math.prod(data.image_shape), data.num_bins, num_samples, mesh, float(guidance)
    )
    state, key = sharding.replicate((state, key), mesh)
    n = data.num_examples
    names = ("bits_per_dim", "marginal_bits_per_dim", "accuracy", "label_nll_nats", "label")
    out = {name: np.empty((n,), np.int32 if name == "label" else np.float64) for name in names}
    for a, b, images, labels, indices in read_batches(data, batch_size, mesh):
        values = jax.device_get(fn(state, images, labels, indices, key))
        for name, value in zip(names, values, strict=True):
            out[name][a:b] = value[: b - a]
        if progress is not None:
            progress(b - a)
    return out


def evaluate_conditional(model, data, *, batch_size, key, num_samples=1, progress=None) -> dict:
    """Conditional and marginal bits/dim, and Bayes-rule accuracy / NLL of p(y|x), with
    standard errors over examples."""
    per_example = per_example_conditional(
        model, data, batch_size=batch_size, key=key, num_samples=num_samples, progress=progress
    )
    return _conditional_record(model, data, per_example, num_samples)


def _conditional_record(model, data, per_example: dict, num_samples: int, guidance=0.0) -> dict:
    labels = per_example["label"]
    n = data.num_examples
    record = {}
    for name in ("bits_per_dim", "marginal_bits_per_dim", "accuracy", "label_nll_nats"):
        mean, se = mean_and_standard_error(per_example[name])
        record[name], record[f"{name}_se"] = mean, se
    record.update(
        conditional=True,
        split=data.name,
        num_examples=int(n),
        num_bins=int(data.num_bins),
        image_shape=list(data.image_shape),
        dequantization=model.dequantizer.kind,
        importance_samples=int(num_samples),
        bound=bound_name(num_samples),
        chance_accuracy=float(np.max(np.bincount(labels)) / n),
    )
    if guidance:
        record["guidance"] = float(guidance)
    return record


def evaluate(model, data, *, batch_size, key, num_samples=1, progress=None) -> dict:
    """``evaluate_conditional`` for label-conditioned models, else ``evaluate_bits_per_dim``."""
    return evaluate_per_example(
        model, data, batch_size=batch_size, key=key, num_samples=num_samples, progress=progress
    )[0]


def evaluate_per_example(
    model, data, *, batch_size, key, num_samples=1, progress=None, guidance=0.0
) -> tuple[dict, dict]:
    """``evaluate``'s record and the per-example values it averages, for the file beside the
    record (``write_per_example``): ``index`` (each example's position in the split, which
    picks its noise), ``marginal_bits_per_dim`` (-log2 p(x) / D: the record's
    ``bits_per_dim`` for an unconditional model, its ``marginal_bits_per_dim`` for a
    conditional one), ``conditional_bits_per_dim`` (-log2 p(x|y) / D, the record's
    ``bits_per_dim``; conditional models only) and ``noise_key`` (the data of ``key``: two
    evaluations with the same key, examples and k draw the same noise). ``guidance`` w > 0
    (a conditional model with guidance): every number is of the guided model, ``p_w(x | y)``
    for every y (``DensityModel.guided_log_prob``), and the record says ``guidance``."""
    kwargs = dict(batch_size=batch_size, key=key, num_samples=num_samples, progress=progress)
    values = {
        "index": np.arange(data.num_examples),
        "noise_key": np.asarray(jax.random.key_data(key)),
    }
    if guidance and not is_conditional(model):
        raise ValueError("guidance needs a label-conditioned model")
    if is_conditional(model):
        per_example = per_example_conditional(model, data, guidance=guidance, **kwargs)
        record = _conditional_record(model, data, per_example, num_samples, guidance)
        values["marginal_bits_per_dim"] = per_example["marginal_bits_per_dim"]
        values["conditional_bits_per_dim"] = per_example["bits_per_dim"]
    else:
        bpd = per_example_bits_per_dim(model, data, **kwargs)
        record = _bits_per_dim_record(model, data, bpd, num_samples)
        values["marginal_bits_per_dim"] = bpd
    return record, values


def write_per_example(file: str, values: dict) -> None:
    """``evaluate_per_example``'s values as an ``.npz`` file, written atomically."""
    with wd.atomic_file(file) as tmp, open(tmp, "wb") as f:
        np.savez(f, **values)


def read_per_example(file: str) -> dict:
    """The arrays of a file ``write_per_example`` wrote (no pickled objects)."""
    with np.load(file, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def summary_line(record: dict) -> str:
    """One human-readable line of an evaluation record, with units and provenance."""
    bpd = f"{record['bits_per_dim']:.4f} ± {record['bits_per_dim_se']:.4f} bits/dim"
    if record.get("conditional"):
        bpd = (
            f"conditional {bpd}; marginal {record['marginal_bits_per_dim']:.4f} ± "
            f"{record['marginal_bits_per_dim_se']:.4f} bits/dim; Bayes accuracy "
            f"{record['accuracy']:.3f} ± {record['accuracy_se']:.3f} (chance "
            f"{record['chance_accuracy']:.3f}); label NLL {record['label_nll_nats']:.3f} nats"
        )
        if record.get("guidance"):
            bpd = f"guided model (w={record['guidance']:g}): {bpd}"
    where = (
        f"{record['split']}, {record['num_examples']} examples, {record['num_bins']} levels, "
        f"{record.get('dequantization', 'uniform')} dequantization, "
        f"k={record['importance_samples']} importance sample(s), {record.get('parameters', '?')} "
        f"params, step {record.get('checkpoint_step', record.get('step', '?'))}"
    )
    return f"{bpd} ({where})"
