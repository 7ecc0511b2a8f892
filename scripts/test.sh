#!/usr/bin/env bash
# The test command: install what is needed, then run the test suite (CPU only).
#   bash scripts/test.sh            every test (what CI runs, .ci/run)
#   bash scripts/test.sh --quick    the quick inner loop: every test not marked slow (the
#                                   trainings and end-to-end runs; pyproject.toml's markers)
# Other arguments go to pytest as they are (test files, -k EXPR, -x, ...).
# Test files run in parallel on the machine's cores (pytest-xdist; one file per worker, so
# a file's module fixtures are built once), those that hold the most slow tests first
# (tests/conftest.py); XLA compilation, which dominates, is single-threaded.
# FLOWS_TEST_WORKERS=1 runs them in one process.
source "$(dirname "$0")/setup_env.sh"
export JAX_PLATFORMS=cpu
# One compilation cache for the whole run: the end-to-end tests start several training
# processes that compile the same programs.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)/jax-cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
# Tests compile many small programs and run few steps: LLVM's optimisation of the compiled
# CPU code is most of their time (2.5x on the bijector tests), so the suite skips it.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0"
# XLA's newer CPU fusion emitters (an MLIR pipeline) take about 40% of a small program's
# compilation: the suite uses the older emitters (30-60% less CPU time in the
# compile-bound test files; the toy-table trainings, optimised, are not slower).
export XLA_FLAGS="$XLA_FLAGS --xla_cpu_use_fusion_emitters=false"
# Results stay exact to the tests' tolerances; benchmarks and real runs keep the defaults.
args=()
for arg in "$@"; do
    if [ "$arg" = "--quick" ]; then
        args+=(-m "not slow")
    else
        args+=("$arg")
    fi
done
workers="${FLOWS_TEST_WORKERS:-auto}"
if [ "$workers" = "1" ]; then
    python -m pytest -q ${args[@]+"${args[@]}"}
else
    python -m pytest -q -n "$workers" --dist loadfile ${args[@]+"${args[@]}"}
fi
