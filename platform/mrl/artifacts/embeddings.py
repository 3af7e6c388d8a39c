"""The embeddings artifact written by the embed stage, one directory per run:

    <output_dir>/embeddings/<mlflow run id>/
        manifest.json             model URI/version, d, sizes, rows per split, producing run ids
        <split>/*.parquet         columns id (int64), label (int64), embedding (fixed_size_list<float>[d])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_embeddings(path: str | Path, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one split's Parquet shards: ids (N,), labels (N,), vectors (N, d) of `dtype`, sorted by id.

    float16 and float32 embedding columns are both accepted; dtype="float16" keeps a 1M x 2048 split at 4 GB.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embeddings {path} do not exist; run the embed stage first (jobs/embed.py)")
    table = pq.read_table(path, columns=["id", "label", "embedding"])
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    vectors = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=dtype).reshape(-1, dim)
    del column
    ids = table.column("id").to_numpy()
    labels = table.column("label").to_numpy()
    order = np.argsort(ids, kind="stable")
    return ids[order], labels[order], vectors[order]
