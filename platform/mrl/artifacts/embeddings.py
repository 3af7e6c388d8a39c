"""The embeddings artifact written by the embed stage, one directory per run:

    <output_dir>/embeddings/<run name, or the MLflow run id>/
        manifest.json             model URI/version, d, sizes, rows per split, producing run ids, and under
                                  "files" every split's Parquet files with their sha256
        <split>/part-*.parquet    columns id (int64), label (int64), embedding (fixed_size_list<float>[d])

`read_embeddings` opens exactly the files the manifest lists for a split, each verified against its sha256;
`read_embedding_files` reads Parquet files no manifest vouches for (a benchmark's own output); `verify_split`
reads a split's ids back before the embed stage lists its files.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrl import storage
from mrl.artifacts.manifest import ManifestError, read_manifest, verify_files
from mrl.artifacts.remote import local_copy
from mrl.data.readers import parquet_file, read_columns

UNIT_GLOB = "part-*.parquet"  # the files of a split


def unit_files(split_dir: str | Path) -> list[str]:
    """A split's Parquet files (`UNIT_GLOB`), local or in object storage, sorted by name."""
    return [f for f in storage.files(split_dir, [".parquet"]) if fnmatch.fnmatch(storage.name(f), UNIT_GLOB)]


def embedding_files(path: str | Path, splits: Iterable[str]) -> dict[str, dict[str, str]]:
    """The manifest's "files": {split: {file name: sha256}} of every split's Parquet files under `path`."""
    return {split: {storage.name(f): storage.sha256(f) for f in unit_files(storage.join(path, split))}
            for split in splits}


def read_embeddings(path: str | Path, dtype: str = "float32", verify: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one split of an embed run: ids (N,), labels (N,), vectors (N, d) of `dtype`, sorted by id.

    Args:
        path: <embed run directory>/<split>; the run directory's manifest lists the split's files. In object
            storage (s3://, gs://), the split is copied into this node's cache first (`local_copy`).
        dtype: float32, or float16 (keeps a 1M x 2048 split at 4 GB); either column type is accepted.
        verify: check each file's sha256 before reading it (the files read are the listed ones either way).

    Raises:
        FileNotFoundError: no such split, or no manifest beside it (not written by the embed stage).
        ManifestError: the manifest lists no such split, names a file that is not a plain file name, or a
            listed file is missing or changed.
    """
    if storage.is_remote(path):
        split = storage.name(path)
        path = local_copy(storage.parent(path), splits=[split]) / split
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embeddings {path} do not exist; run the embed stage first (jobs/embed.py)")
    manifest = read_manifest(path.parent, stage="embed")
    listing = (manifest.get("files") or {}).get(path.name)
    if listing is None:
        raise ManifestError(f"the manifest of {path.parent} lists no split {path.name!r} (splits: "
                            f"{sorted(manifest.get('files') or {})})")
    verify_files(path, listing, listing, verify)
    return read_embedding_files([path / name for name in sorted(listing)], dtype)


def read_embedding_files(files: Sequence[str | Path], dtype: str = "float32"
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parquet files of id, label and embedding columns, unverified: ids, labels, vectors sorted by id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not files:
        raise FileNotFoundError("no embedding files to read")
    table = pa.concat_tables([pq.read_table(f, columns=["id", "label", "embedding"]) for f in files])
    return _arrays(table, dtype)


def _arrays(table: Any, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    vectors = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=dtype).reshape(-1, dim)
    del column
    ids = table.column("id").to_numpy()
    labels = table.column("label").to_numpy()
    order = np.argsort(ids, kind="stable")
    return ids[order], labels[order], vectors[order]


def verify_split(split_dir: str | Path, ids: np.ndarray) -> dict[str, Any]:
    """Read back every id of a split's units: the rows must be exactly `ids`, each once.

    The driver's memory for this is two id arrays (the found ids, read file by file into one array, and a
    sorted copy of the expected ones), sorted in place: 16 bytes a row, nothing per file.

    Raises:
        RuntimeError: naming how many ids are duplicated or missing.
    """
    files = unit_files(split_dir)
    found = np.empty(sum(parquet_file(f).metadata.num_rows for f in files), dtype=np.int64)
    at = 0
    for f in files:
        part = read_columns(f, ["id"]).column("id").to_numpy()
        found[at:at + len(part)] = part
        at += len(part)
    found.sort()
    repeated = np.zeros(len(found), dtype=bool)
    repeated[1:] = found[1:] == found[:-1]
    duplicates = int(repeated.sum())
    unique = found[~repeated]
    expected = np.sort(ids)  # unique: `_split_ids` refuses data with repeated ids
    at = np.minimum(np.searchsorted(unique, expected), max(len(unique) - 1, 0))
    present = int((unique[at] == expected).sum()) if len(unique) else 0
    missing, extra = len(expected) - present, len(unique) - present
    if duplicates or missing or extra:
        raise RuntimeError(f"{split_dir}: {duplicates} duplicate, {missing} missing and {extra} unexpected ids "
                           f"among {len(found):,} rows in {len(files)} files")
    return {"rows": int(len(found)), "files": len(files), "duplicates": 0, "missing": 0}
