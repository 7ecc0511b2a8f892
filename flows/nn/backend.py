"""The one place where ``'auto'`` kernel and dtype choices are resolved for the backend.

Both are decided once, when a model is built (``jax.default_backend()`` at that moment), and
each resolver returns the choice and a one-line reason, which benchmarks and device checks
record next to their numbers.

* ``conv_impl`` (how the coupling, prior and dequantizer networks run their convolutions):
  ``'gemm'`` is ``flows.nn.conv.conv2d_same``, k*k shifted matrix products with a
  hand-written VJP, tuned for XLA:CPU, whose convolution kernels (above all the backward
  ones inside ``lax.scan``) are slow; ``'lax'`` is ``lax.conv_general_dilated`` and a plain
  product, differentiated by autodiff (so ``jax.jvp`` / ``jax.jacfwd`` work through the
  model, and GPU/TPU use their own convolution kernels). ``'auto'``: ``'gemm'`` on CPU,
  ``'lax'`` on GPU and TPU.
* ``matmul_impl`` (a transformer's row products, TarFlow's): the same three names; ``'gemm'``
  is ``flows.nn.transformer.dense`` with its hand-written VJP, ``'lax'`` plain autodiff.
* ``compute_dtype`` (the coupling networks' product dtype): ``'auto'`` is ``'bfloat16'``
  only where bf16 products are faster than float32: on GPU and TPU, and on a CPU that
  reports native bf16 dot instructions (Linux ``/proc/cpuinfo`` flags ``avx512_bf16`` or
  ``amx_bf16``); ``'float32'`` otherwise. Without those instructions XLA:CPU converts bf16
  operands to float32 around a float32 kernel: bf16 is then slower, never faster.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flows.errors import ConfigError

CONV_IMPLS = ("auto", "lax", "gemm")
COMPUTE_DTYPES = ("float32", "bfloat16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"


def check_compute_dtype(compute_dtype) -> str:
    """The canonical name of a coupling network's product dtype ('float32' or 'bfloat16');
    ``'auto'`` is not one (``resolve_compute_dtype`` turns it into one)."""
    try:
        name = jnp.dtype(compute_dtype).name if compute_dtype is not None else "float32"
    except TypeError:  # not a dtype name at all ('auto' included)
        name = None
    if name not in COMPUTE_DTYPES:
        raise ConfigError(
            f"compute_dtype {compute_dtype!r}: use one of {['auto', *COMPUTE_DTYPES]}"
        )
    return name


def _backend(backend: str | None) -> str:
    return jax.default_backend() if backend is None else backend


def _resolve_impl(field: str, impl: str, backend: str | None, cpu_why: str, other_why: str):
    """``(impl, reason)`` for a kernel choice of ``CONV_IMPLS``: ``'auto'`` is ``'gemm'`` on
    CPU and ``'lax'`` elsewhere."""
    if impl not in CONV_IMPLS:
        raise ConfigError(f"{field} {impl!r}: use one of {list(CONV_IMPLS)}")
    if impl != "auto":
        return impl, f"{impl}: as configured"
    backend = _backend(backend)
    if backend == "cpu":
        return "gemm", f"gemm: CPU backend ({cpu_why})"
    return "lax", f"lax: {backend} backend ({other_why})"


def resolve_conv_impl(conv_impl: str = "auto", *, backend: str | None = None) -> tuple[str, str]:
    """``(impl, reason)``: ``impl`` is ``'gemm'`` or ``'lax'``; ``'auto'`` is ``'gemm'`` on
    CPU (XLA:CPU's convolution kernels are slow, its GEMMs fast) and ``'lax'`` on GPU/TPU.
    ``backend`` defaults to ``jax.default_backend()``."""
    return _resolve_impl(
        "conv_impl",
        conv_impl,
        backend,
        "custom-VJP patch GEMMs beat XLA:CPU convolutions",
        "its own convolution kernels, plain autodiff",
    )


def resolve_matmul_impl(
    matmul_impl: str = "auto", *, backend: str | None = None
) -> tuple[str, str]:
    """``(impl, reason)`` for a transformer's row products (``flows.nn.transformer``):
    ``'gemm'`` gives them a hand-written VJP whose weight gradients run on XLA:CPU's fast
    GEMM (no forward-mode rule), ``'lax'`` is plain products and autodiff (``jax.jvp`` /
    ``jax.jacfwd`` work). ``'auto'``: ``'gemm'`` on CPU, ``'lax'`` on GPU/TPU."""
    return _resolve_impl(
        "matmul_impl",
        matmul_impl,
        backend,
        "weight gradients on XLA:CPU's fast GEMM layout",
        "plain products and autodiff",
    )


def cpu_bf16_flags(cpuinfo_path: str | None = None) -> list[str]:
    """The native-bf16 dot flags (``BF16_CPU_FLAGS``) the CPU reports in ``cpuinfo_path``
    (default ``CPUINFO``); empty where the file is missing or unreadable (not Linux)."""
    cpuinfo_path = CPUINFO if cpuinfo_path is None else cpuinfo_path
    try:
        with open(cpuinfo_path) as f:
            text = f.read()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return [flag for flag in BF16_CPU_FLAGS if flag in flags]


def resolve_compute_dtype(
    compute_dtype: str = "auto", *, backend: str | None = None, cpuinfo_path: str | None = None
) -> tuple[str, str]:
    """``(dtype, reason)``: ``dtype`` is ``'float32'`` or ``'bfloat16'``. ``'auto'`` is
    bfloat16 on GPU/TPU and on CPUs with native bf16 dots (``cpu_bf16_flags``), float32
    otherwise (never a slower path). ``backend`` defaults to ``jax.default_backend()``."""
    if compute_dtype != "auto":
        name = check_compute_dtype(compute_dtype)
        return name, f"{name}: as configured"
    backend = _backend(backend)
    if backend != "cpu":
        return "bfloat16", f"bfloat16: {backend} backend (native bf16 matrix units)"
    cpuinfo_path = CPUINFO if cpuinfo_path is None else cpuinfo_path
    flags = cpu_bf16_flags(cpuinfo_path)
    if flags:
        return "bfloat16", f"bfloat16: CPU with native bf16 dot ({'/'.join(flags)})"
    return "float32", (
        f"float32: CPU without native bf16 dot (no {'/'.join(BF16_CPU_FLAGS)} in {cpuinfo_path})"
    )
