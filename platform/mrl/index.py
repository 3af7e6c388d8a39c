"""The build_index stage and the index artifact.

An index directory holds, for the database split of one embed run:

    manifest.json       model URI/version, d, sizes, kind, metric, rows, sha256 of every file, run ids
    size_<m>.faiss      a FAISS index over the L2-normalised prefix z[:m], one per indexed size
    vectors.npy         raw full-size vectors (N, d) float32 or float16, memory-mapped at load for exact reranking
    adanns.npz          optional AdANNS cells (k-means on one prefix size) for the service's adanns mode
    ids.npy, labels.npy row ids and labels, aligned with the FAISS positions

`load_index` verifies checksums and shapes and refuses a directory that does not match what the caller
expects (dimension, model), naming the mismatch.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrl.embed import MANIFEST, point_latest, read_embeddings, read_manifest

FORMAT_VERSION = 1
METRIC = "inner product of separately L2-normalised prefixes (cosine)"


class IndexMismatchError(ValueError):
    """The index artifact does not match its files, the vectors or the model it is used with."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_index(out: Path, ids: np.ndarray, labels: np.ndarray, vectors: np.ndarray, sizes: list[int],
                kind: str, extra: dict[str, Any], params: dict[str, int] | None = None,
                vector_dtype: str = "float32", adanns: tuple[int, int] | None = None) -> dict[str, Any]:
    """Build one FAISS index per prefix size and write the artifact; returns the manifest.

    Args:
        params: `build_prefix_index` keyword arguments (graph degree, IVF cells, PQ codes).
        vector_dtype: float32 or float16 storage of the full-size rerank vectors.
        adanns: (cell prefix size, cells) to also build AdANNS cells, or None.
    """
    import faiss

    from mrl.ann import AdannsIVF
    from mrl.search import build_prefix_index

    out.mkdir(parents=True, exist_ok=True)
    dim = vectors.shape[1]
    bad = [m for m in sizes if not 1 <= m <= dim]
    if bad:
        raise IndexMismatchError(f"index sizes {bad} are outside [1, d={dim}] of these embeddings")
    if adanns is not None and not 1 <= adanns[0] <= dim:  # before any index is built
        raise IndexMismatchError(f"index.adanns_size {adanns[0]} is outside [1, d={dim}]")
    np.save(out / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.dtype(vector_dtype)))
    np.save(out / "ids.npy", ids.astype(np.int64))
    np.save(out / "labels.npy", labels.astype(np.int64))
    for m in sizes:
        faiss.write_index(build_prefix_index(vectors, m, kind, **(params or {})), str(out / f"size_{m}.faiss"))
    if adanns is not None:
        AdannsIVF.build(vectors, cluster_size=adanns[0], nlist=adanns[1]).save(out / "adanns.npz")
    files = sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    manifest = {"format_version": FORMAT_VERSION, "stage": "index", "dim": dim, "sizes": list(sizes), "kind": kind,
                "metric": METRIC, "dtype": np.dtype(vector_dtype).name, "params": params or {}, "rows": int(len(ids)),
                "adanns": None if adanns is None else {"size": adanns[0], "nlist": adanns[1]},
                "checksums": {name: sha256(out / name) for name in files}, **extra}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


@dataclass
class IndexArtifact:
    """A loaded index directory."""

    path: Path
    manifest: dict[str, Any]
    ids: np.ndarray
    labels: np.ndarray
    vectors: np.ndarray  # (N, d) raw vectors, memory-mapped
    indexes: dict[int, Any] = field(default_factory=dict)
    store: Any = None  # PrefixStore over `vectors`: exact rescoring of any prefix
    adanns: Any = None  # AdannsIVF, when the index was built with index.adanns_size

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def version(self) -> str:
        """The index's identity: the MLflow run that built it."""
        return str(self.manifest.get("index_run_id", self.path.name))


def load_index(path: str | Path, expect_dim: int | None = None, expect_model_uri: str | None = None,
               verify: bool = True, device: str = "cpu") -> IndexArtifact:
    """Open an index directory, checking it against its manifest and the caller's expectations.

    Args:
        path: the directory.
        expect_dim: refuse unless the index was built for vectors of this size.
        expect_model_uri: refuse unless the index was built from this model version.
        verify: check the sha256 of every file.
        device: cpu, gpu or auto (faiss-gpu).

    Raises:
        FileNotFoundError: not an index directory.
        IndexMismatchError: checksum, shape, dimension or model mismatch.
    """
    import faiss

    from mrl.search import to_device

    path = Path(path).resolve()
    manifest = read_manifest(path)
    if manifest.get("stage") != "index":
        raise IndexMismatchError(f"{path} holds a {manifest.get('stage')!r} manifest, not an index")
    if expect_dim is not None and manifest["dim"] != expect_dim:
        raise IndexMismatchError(f"index {path} was built for d={manifest['dim']} vectors, not d={expect_dim}")
    if expect_model_uri is not None and manifest.get("model_uri") != expect_model_uri:
        raise IndexMismatchError(f"index {path} was built for model {manifest.get('model_uri')!r}, "
                                 f"not {expect_model_uri!r}")
    if verify:
        for name, digest in manifest["checksums"].items():
            file = path / name
            if not file.is_file():
                raise IndexMismatchError(f"index file {file} listed in the manifest is missing")
            if sha256(file) != digest:
                raise IndexMismatchError(f"index file {file} does not match its manifest checksum "
                                         "(modified or corrupt); rebuild the index")
    vectors = np.load(path / "vectors.npy", mmap_mode="r")
    ids, labels = np.load(path / "ids.npy"), np.load(path / "labels.npy")
    if vectors.dtype.name != manifest.get("dtype", "float32"):
        raise IndexMismatchError(f"index {path}: vectors.npy holds {vectors.dtype.name}, the manifest says "
                                 f"{manifest.get('dtype')}")
    if vectors.shape != (manifest["rows"], manifest["dim"]) or len(ids) != manifest["rows"]:
        raise IndexMismatchError(f"index {path}: vectors {vectors.shape} / ids {len(ids)} do not match the "
                                 f"manifest's {manifest['rows']} rows x d={manifest['dim']}")
    from mrl.ann import AdannsIVF
    from mrl.search import PrefixStore, torch_device

    store = PrefixStore(vectors, device=torch_device(device))
    adanns = AdannsIVF.load(path / "adanns.npz") if manifest.get("adanns") else None
    indexes = {}
    for m in manifest["sizes"]:
        index = faiss.read_index(str(path / f"size_{m}.faiss"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        if index.d != m or index.ntotal != manifest["rows"]:
            raise IndexMismatchError(f"{path / f'size_{m}.faiss'} has d={index.d}, rows={index.ntotal}; "
                                     f"the manifest says d={m}, rows={manifest['rows']}")
        indexes[m] = to_device(index, device)
    return IndexArtifact(path, manifest, ids, labels, vectors, indexes, store, adanns)


def run_build_index(job, embeddings: str | None = None) -> dict[str, Any]:
    """The build_index stage for an `IndexJobConfig` over the embed run's database (train) split.

    Returns:
        {"run_id", "path", "sizes", "rows", "seconds"}.
    """
    import mlflow

    from mrl import tracking
    from mrl.configio import to_dict

    emb_dir = Path(embeddings or job.embeddings).resolve()
    emb = read_manifest(emb_dir)
    sizes = list(job.index.sizes or emb["sizes"])
    if max(sizes) > emb["dim"]:
        raise IndexMismatchError(f"index.sizes {sizes} go above the embeddings' d={emb['dim']}")
    if job.index.adanns_size is not None and job.index.adanns_size > emb["dim"]:
        raise IndexMismatchError(f"index.adanns_size {job.index.adanns_size} goes above the embeddings' "
                                 f"d={emb['dim']}")
    if job.index.kind == "ivfpq" and any(m % job.index.pq_m for m in sizes):
        raise IndexMismatchError(f"index.pq_m={job.index.pq_m} must divide every indexed size; it does not divide "
                                 f"{[m for m in sizes if m % job.index.pq_m]} (set index.sizes or index.pq_m)")
    tracking.setup(job.mlflow, job.output_dir)
    started = time.time()
    with mlflow.start_run(run_name="build_index", tags={"mrl.stage": "index", "mrl.input_run_id": emb["embed_run_id"],
                                                        "mrl.input_uri": str(emb_dir)}) as run:
        tracking.log_params({"index": to_dict(job.index), "embeddings": str(emb_dir), "sizes": sizes})
        ids, labels, vectors = read_embeddings(emb_dir / "train", job.index.vector_dtype)
        out = Path(job.output_dir).resolve() / "index" / run.info.run_id
        extra = {"index_run_id": run.info.run_id, "embed_run_id": emb["embed_run_id"],
                 "model_uri": emb.get("model_uri"), "model_name": emb.get("model_name"),
                 "model_version": emb.get("model_version"), "embeddings": str(emb_dir)}
        adanns = None if job.index.adanns_size is None else (job.index.adanns_size, job.index.adanns_nlist)
        manifest = write_index(out, ids, labels, vectors, sizes, job.index.kind, extra, job.index.params(),
                               job.index.vector_dtype, adanns)
        point_latest(out)
        mlflow.log_artifacts(str(out), artifact_path="index")
        mlflow.set_tag("mrl.output_path", str(out))
        seconds = time.time() - started
        mlflow.log_metrics({"rows": manifest["rows"], "index_wall_seconds": seconds})
    print(f"[build_index] {manifest['rows']} rows, sizes {sizes}, {job.index.kind} -> {out} ({seconds:.0f}s)",
          flush=True)
    return {"run_id": run.info.run_id, "path": str(out), "sizes": sizes, "rows": manifest["rows"],
            "seconds": seconds}
