#!/usr/bin/env bash
# Sets up .venv, trains the digits example with trainwatch and writes
# TensorBoard logs to runs/digits. Usage: bash scripts/demo.sh [example args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
KERAS_BACKEND="${KERAS_BACKEND:-jax}" .venv/bin/python examples/digits.py "$@"
