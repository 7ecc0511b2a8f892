# Sourced by the scripts below: make sure a Python environment with the project installed
# (`pip install -e ".[test]"`: the library, its dependencies and the test tools) exists and is
# active. Uses the active virtualenv if there is one, else ./.venv (created on demand).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -z "${VIRTUAL_ENV:-}" ]; then
    if [ ! -x .venv/bin/python ]; then
        echo "creating .venv (python3 -m venv) ..."
        python3 -m venv .venv
    fi
    # shellcheck disable=SC1091
    source .venv/bin/activate
fi
stamp="$VIRTUAL_ENV/.flows-install.sha"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "installing flows (pip install -e \".[test]\") into $VIRTUAL_ENV ..."
    python -m pip install -q --upgrade pip
    python -m pip install -q -e ".[test]"
    echo "$want" > "$stamp"
fi
