#!/usr/bin/env bash
# Fresh machine -> trained MRL model, embeddings, FAISS index, evaluation table and a running
# adaptive-retrieval service answering an example query, all on local Ray with MLflow's sqlite store.
# Extra arguments are config overrides, e.g. ./quickstart.sh keep_serving=true train.epochs=3
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec "${PYTHON:-python3}" jobs/pipeline.py --config jobs/pipeline.yaml "$@"
