#!/usr/bin/env bash
# Fresh machine -> trained MRL model, embeddings, FAISS index, evaluation table and a running
# adaptive-retrieval service answering an example query, all on local Ray with MLflow's sqlite store.
# Extra arguments are config overrides, e.g. ./quickstart.sh keep_serving=true train.epochs=3
# The interpreter: scripts/python.sh (the project venv .venv unless PYTHON= or an activated venv/conda env).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
. scripts/python.sh
exec "$(choose_python)" jobs/pipeline.py --config jobs/pipeline.yaml "$@"
