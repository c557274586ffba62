#!/usr/bin/env bash
# Sets up .venv and runs the lint and the test suite once per Keras backend.
# Usage: bash scripts/test.sh [pytest args...]
# BACKENDS="jax torch" bash scripts/test.sh   # a subset of backends
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The end-to-end TensorBoard test drives a headless Chromium. In CI, install it
# (best effort: without it, that test skips and says why).
if [ "${CI:-}" = "true" ] && [ ! -x /usr/bin/chromium ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq chromium >/dev/null; } \
        || echo "chromium could not be installed; the browser test will skip"
fi
.venv/bin/ruff check trainwatch tests examples benchmarks
status=0
for backend in ${BACKENDS:-tensorflow jax torch}; do
    echo "=== KERAS_BACKEND=$backend"
    KERAS_BACKEND=$backend .venv/bin/python -m pytest "$@" || status=1
done
exit $status
