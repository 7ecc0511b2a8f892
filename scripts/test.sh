#!/usr/bin/env bash
# The test command: install what is needed, then run the whole test suite (CPU only).
# Test files run in parallel on the machine's cores (pytest-xdist; one file per worker, so
# a file's module fixtures are built once); XLA compilation, which dominates, is
# single-threaded. FLOWS_TEST_WORKERS=1 runs them in one process.
source "$(dirname "$0")/setup_env.sh"
export JAX_PLATFORMS=cpu
# One compilation cache for the whole run: the end-to-end tests start several training
# processes that compile the same programs.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)/jax-cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
# Tests compile many small programs and run few steps: LLVM's optimisation of the compiled
# CPU code is most of their time (2.5x on the bijector tests, AMD EPYC), so the suite skips it.
# Results stay exact to the tests' tolerances; benchmarks and real runs keep the default.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0"
workers="${FLOWS_TEST_WORKERS:-auto}"
if [ "$workers" = "1" ]; then
    python -m pytest -q "$@"
else
    # With no arguments: every test file, the longest first (pytest keeps the order of the
    # files it is given), so no worker starts a long file while the others run out of work.
    if [ "$#" -eq 0 ]; then
        longest=(tests/test_user_paths.py tests/test_bijectors.py tests/test_toy_tables.py
            tests/test_distributed.py tests/test_invertible_backprop.py
            tests/test_workdir_contract.py)
        set -- "${longest[@]}"
        for file in tests/test_*.py; do
            [[ " ${longest[*]} " == *" $file "* ]] || set -- "$@" "$file"
        done
    fi
    python -m pytest -q -n "$workers" --dist loadfile "$@"
fi
