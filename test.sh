#!/usr/bin/env bash
# Fresh machine -> the whole test suite (unit, config, and end-to-end through real Ray, MLflow, FAISS and
# Ray Serve). Extra arguments go to pytest, e.g. ./test.sh -m "not slow" for the fast tests only.
# The interpreter: scripts/python.sh (the project venv .venv unless PYTHON= or an activated venv/conda env).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --test
. scripts/python.sh
exec "$(choose_python)" -m pytest -q "$@"
