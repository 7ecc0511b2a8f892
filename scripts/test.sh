#!/usr/bin/env bash
# The test command: install what is needed, then run the whole test suite (CPU only).
source "$(dirname "$0")/setup_env.sh"
export JAX_PLATFORMS=cpu
python -m pytest -q "$@"
