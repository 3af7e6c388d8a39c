"""What stages leave on disk and record in MLflow (above `mrl.retrieval`).

- `tracking`: the MLflow store, model logging and loading, and the lineage tag names (`TAG_*`).
- `lineage`: the chain from a deployment, index, embeddings or model down to the data, checked.
- `index`: the index artifact (FAISS indexes per size, vectors, manifest) written and loaded.
- `embeddings`, `manifest`, `model_files`, `mlflow_model`: Parquet embeddings, checksummed manifests, model
  directories (safetensors + spec) and the MLflow pyfunc around them.
- `files`: atomic writes (temporary names, fsync, rename), directories published whole, the run lock.
- `datasets`: content digests of training data, recorded by the train stage and re-checked by `lineage`.
- `config`: `MlflowConfig`.
"""

__all__ = ["config", "datasets", "embeddings", "files", "index", "lineage", "manifest", "mlflow_model", "model_files",
           "tracking"]
