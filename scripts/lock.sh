#!/usr/bin/env bash
# Regenerate requirements.txt: the exact environment the test suite and the published records
# ran with. A fresh virtualenv gets what scripts/setup_env.sh gives the suite (pip upgraded,
# then `pip install ".[test]"`, from a copy of pyproject.toml, README.md and flows/ so no build
# output lands in the checkout); `pip freeze --all` of it, the project itself left out, becomes
# requirements.txt (scripts/lock.py: PEP 503 names, sorted, name==version only).
#
# One file with two marked sections, not a separate requirements-test.txt: the numbers were
# measured in one environment, made by one resolution of `.[test]` (the test extra's
# tensorboard shares numpy, protobuf, grpcio, packaging, ... with the runtime, so a runtime-only
# resolution could pick other versions), and reproducing them, tests included, is one
# `pip install -r requirements.txt`. The first section is the runtime closure of pyproject's
# dependencies, the second what the [test] extra adds; pyproject.toml keeps its lower bounds.
#
# The file names the command and the Python it was made with, no date, machine or commit, so
# rerunning this on the same machine against the same package index gives no diff. A new
# release of anything in the tree changes the resolution, as it would for `pip install`.
#
#   scripts/lock.sh           rewrite requirements.txt
#   scripts/lock.sh --check   regenerate into a temporary file and diff (exit 1 on a difference)
# PYTHON=python3.11 picks the interpreter (default python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
check=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    *) echo "usage: scripts/lock.sh [--check]" >&2; exit 2 ;;
esac
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m venv "$tmp/venv"
py="$tmp/venv/bin/python"
mkdir "$tmp/src"
cp -r pyproject.toml README.md flows "$tmp/src/"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "$tmp/src[test]"
"$py" -m pip freeze --all > "$tmp/freeze.txt"
"$py" scripts/lock.py pyproject.toml < "$tmp/freeze.txt" > "$tmp/requirements.txt"
if [ "$check" = 1 ]; then
    diff -u requirements.txt "$tmp/requirements.txt" && echo "requirements.txt: no diff"
else
    mv "$tmp/requirements.txt" requirements.txt
    echo "wrote requirements.txt ($(grep -c '==' requirements.txt) packages)"
fi
