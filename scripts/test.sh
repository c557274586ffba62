#!/usr/bin/env bash
# Sets up .venv and runs the lint and the test suite once per Keras backend.
# Usage: bash scripts/test.sh [pytest args...]
# BACKENDS="jax torch" bash scripts/test.sh   # a subset of backends
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check trainwatch tests examples benchmarks
status=0
for backend in ${BACKENDS:-tensorflow jax torch}; do
    echo "=== KERAS_BACKEND=$backend"
    KERAS_BACKEND=$backend .venv/bin/python -m pytest "$@" || status=1
done
exit $status
