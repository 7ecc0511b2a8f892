# Sourced by the scripts below: make sure a Python environment with requirements.txt exists
# and is active. Uses the active virtualenv if there is one, else ./.venv (created on demand).
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
stamp="$VIRTUAL_ENV/.flows-requirements.sha"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "installing requirements.txt into $VIRTUAL_ENV ..."
    python -m pip install -q --upgrade pip
    python -m pip install -q -r requirements.txt
    echo "$want" > "$stamp"
fi
