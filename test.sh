#!/usr/bin/env bash
# Fresh machine -> the whole test suite (unit, config, and end-to-end through real Ray, MLflow, FAISS and
# Ray Serve). Extra arguments go to pytest, e.g. ./test.sh -m "not slow" for the fast tests only.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec "${PYTHON:-python3}" -m pytest -q "$@"
