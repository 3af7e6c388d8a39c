"""The index artifact: what the index stage writes and the service and benchmark load.

An index directory holds, for the database split of one embed run:

    manifest.json       format version, model URI/version, d, sizes, kind, rows, sha256 of every file, run ids
    size_<m>.faiss      a FAISS index over the L2-normalised prefix z[:m], one per indexed size
    vectors.npy         raw full-size vectors (N, d) float32 or float16, memory-mapped at load for exact reranking
    adanns.npz          optional AdANNS cells (k-means on one prefix size) for the adanns search mode
    <kind>_<m>.npy      optional compact codes of prefix m (binary sign bits, or int8 with <kind>_<m>_scale.npy)
                        for code rerank stages, read into memory at load

The size_<m>.faiss of a binary kind (binary_flat, binary_hnsw, binary_ivf) is a FAISS binary index of the
prefix's sign bits. What a loaded index keeps in the process's memory is its FAISS indexes and codes; the
full vectors stay a memory map of vectors.npy, read a candidate at a time.
    ids.npy, labels.npy row ids and labels, aligned with the FAISS positions

A sharded index (`write_sharded_index`, index.shards > 1) is a directory of such artifacts, `shard-000/` ...,
each complete for its rows (its own manifest, checksums, FAISS indexes, codes and vectors), under a top-level
manifest.json that lists them: how rows were assigned (`by`: a stable hash of the id, or id ranges), how a
plan's shortlist is shared among them (`rule`, `mrl.retrieval.sharded.shard_plan`), and per shard its
directory, row count, id range and the sha256 of its manifest. `load_index` refuses a sharded directory;
`load_shard` opens one shard and holds it to the top-level manifest (same index version, d, sizes, rows,
manifest checksum).

`check_index_config` holds the rules between an index config and the vectors' d (checked by the build stage
and the pipeline's up-front check; each rule is a function of `mrl.retrieval.indexes` that the benchmark
calls too); `load_index` verifies checksums, shapes and the format
version and refuses a directory that does not match what the caller expects (dimension, model), naming the
mismatch; `IndexArtifact.engine` is the `SearchEngine` over it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrl import storage
from mrl.artifacts.files import publish_dir, remove_dir, temp_name
from mrl.artifacts.manifest import ManifestError, read_manifest, sha256, verify_files, write_manifest
from mrl.artifacts.remote import artifact_location
from mrl.retrieval.adanns import AdannsIVF
from mrl.retrieval.codes import CodeStore, check_code, code_files
from mrl.retrieval.engine import CellSource, FaissSource, SearchEngine
from mrl.retrieval.indexes import BINARY_KINDS, IndexParams, build_prefix_index, check_index, check_prefix_size
from mrl.retrieval.modes import ADANNS_SOURCE, index_source
from mrl.retrieval.sharded import assign_shards, range_starts
from mrl.retrieval.store import PrefixStore, save_page_aligned, torch_device

METRIC = "inner product of separately L2-normalised prefixes (cosine)"


class IndexMismatchError(ValueError):
    """The index artifact does not match its files, the vectors or the model it is used with."""


def check_index_config(index_cfg, dim: int, default_sizes: list[int]) -> list[int]:
    """The rules between an `IndexConfig` and vectors of size d, before anything is built.

    Args:
        index_cfg: the `IndexConfig`.
        dim: d of the vectors to index.
        default_sizes: the sizes indexed when the config leaves them unset (the model's nesting list).

    Returns:
        The sizes it indexes.

    Raises:
        IndexMismatchError: a size, a code's size or the AdANNS size outside [1, d], or pq_m not dividing a size.
    """
    sizes = list(index_cfg.sizes if index_cfg.sizes is not None else default_sizes)
    if max(sizes) > dim:
        raise IndexMismatchError(f"index.sizes {sizes} go above d={dim}")
    try:
        unknown = sorted({o.size for o in index_cfg.per_size} - set(sizes))
        if unknown:
            raise ValueError(f"index.per_size sets sizes {unknown}, which are not indexed (sizes {sizes})")
        check_build(index_cfg.kind, sizes, dim, {m: index_cfg.params(m) for m in sizes}, index_cfg.adanns_size,
                    index_cfg.codes)
    except ValueError as exc:
        raise IndexMismatchError(f"{exc} (set index.sizes, index.per_size, index.adanns_size or index.pq_m)") from None
    return sizes


def params_for(params: IndexParams | Mapping[int, IndexParams] | None, size: int) -> IndexParams:
    """The build settings of the index on prefix `size`: one set for every size, or a set per size."""
    if params is None:
        return IndexParams()
    return params if isinstance(params, IndexParams) else params[size]


def check_build(kind: str, sizes: list[int], dim: int, params: IndexParams | Mapping[int, IndexParams],
                adanns_size: int | None, codes: Sequence[tuple[int, str]] = ()) -> None:
    """Every rule an index build must pass, before anything is built: each size's index (kind, size within d,
    pq_m, graph storage), the AdANNS cells' size and the code stores' (size, kind). Raises ValueError naming
    the first broken rule."""
    if adanns_size is not None:
        check_prefix_size("index.adanns_size", adanns_size, dim)
    for size, code in codes:
        try:
            check_code(code, size, dim)
        except ValueError as exc:
            raise ValueError(f"index.codes: {exc}") from None
    for m in sizes:
        check_index(kind, m, dim, params_for(params, m))


def planned_codes(codes: Sequence[tuple[int, str]]) -> list[tuple[str, int]]:
    """(kind, size) of the code stores an index built with `index.codes` (size, kind) pairs keeps."""
    return [(kind, int(size)) for size, kind in codes]


def planned_sources(sizes: list[int], adanns_size: int | None) -> dict[str, int]:
    """Shortlist sources (name -> prefix size) of an index built with these sizes and AdANNS cells."""
    sources = {index_source(m): m for m in sizes}
    if adanns_size is not None:
        sources[ADANNS_SOURCE] = adanns_size
    return sources


def write_index(out: Path, ids: np.ndarray, labels: np.ndarray, vectors: np.ndarray, sizes: list[int],
                kind: str, extra: dict[str, Any], params: IndexParams | Mapping[int, IndexParams] | None = None,
                vector_dtype: str = "float32", adanns: tuple[int, int] | None = None,
                codes: Sequence[tuple[int, str]] = ()) -> dict[str, Any]:
    """Build one FAISS index per prefix size and write the artifact; returns the manifest.

    The directory is written under a temporary sibling name, every file fsynced, then renamed to `out` at once:
    `out` holds a complete artifact or nothing (a killed build leaves only a hidden .<name>.tmp-* sibling).

    Args:
        out: the directory to create (absent, or an empty directory).
        params: index build settings (graph degree and storage, IVF cells, PQ codes), for every size or per size.
        vector_dtype: float32 or float16 storage of the full-size rerank vectors.
        adanns: (cell prefix size, cells) to also build AdANNS cells, or None.
        codes: (size, kind) code stores to keep for code rerank stages (binary | int8).

    Raises:
        IndexMismatchError: settings an index cannot be built with (before anything is written).
        FileExistsError: `out` exists and is not empty.
    """
    dim = vectors.shape[1]
    try:
        check_build(kind, sizes, dim, params, None if adanns is None else adanns[0], codes)
    except ValueError as exc:
        raise IndexMismatchError(str(exc)) from None
    out = Path(out)
    tmp = _temp_dir_for(out)
    try:
        _write_files(tmp, ids, labels, vectors, sizes, kind, params, vector_dtype, adanns, codes)
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {"stage": "index", "dim": dim, "sizes": list(sizes), "kind": kind, "metric": METRIC,
                    "dtype": np.dtype(vector_dtype).name,
                    "params": {str(m): dataclasses.asdict(params_for(params, m)) for m in sizes},
                    "rows": int(len(ids)),
                    "adanns": None if adanns is None else {"size": adanns[0], "nlist": adanns[1]},
                    "codes": [[int(size), code] for size, code in codes],
                    "checksums": {name: sha256(tmp / name) for name in files}, **extra}
        write_manifest(tmp, manifest)
        publish_dir(tmp, out)
    finally:
        remove_dir(tmp)  # gone after the rename; what a failed write left otherwise
    return read_manifest(out)


def _temp_dir_for(out: Path) -> Path:
    """A new temporary sibling directory to write the index `out` into (renamed to `out` when complete).

    Raises:
        FileExistsError: `out` exists and is not empty (an index directory is written once).
    """
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: an index directory is written once; give a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(out)
    tmp.mkdir()
    return tmp


def _write_files(out: Path, ids: np.ndarray, labels: np.ndarray, vectors: np.ndarray, sizes: list[int], kind: str,
                 params, vector_dtype: str, adanns: tuple[int, int] | None,
                 codes: Sequence[tuple[int, str]] = ()) -> None:
    """The index's files: rerank vectors, ids, labels, a FAISS index per size, the AdANNS cells, the codes."""
    import faiss

    save_page_aligned(out / "vectors.npy", vectors, np.dtype(vector_dtype))  # a float16 row at d = 2048: one page
    np.save(out / "ids.npy", ids.astype(np.int64))
    np.save(out / "labels.npy", labels.astype(np.int64))
    for m in sizes:
        index = build_prefix_index(vectors, m, kind, params_for(params, m))
        write = faiss.write_index_binary if kind in BINARY_KINDS else faiss.write_index
        write(index, str(out / f"{index_source(m)}.faiss"))
    if adanns is not None:
        AdannsIVF.build(vectors, cluster_size=adanns[0], nlist=adanns[1]).save(out / "adanns.npz")
    for size, code in codes:
        CodeStore.build(vectors, code, size).save(out)


def shard_dir(i: int) -> str:
    """The directory of shard i inside a sharded index."""
    return f"shard-{i:03d}"


def write_sharded_index(out: Path, ids: np.ndarray, labels: np.ndarray, vectors: np.ndarray, sizes: list[int],
                        kind: str, extra: dict[str, Any], params: IndexParams | Mapping[int, IndexParams] | None = None,
                        vector_dtype: str = "float32", adanns: tuple[int, int] | None = None,
                        codes: Sequence[tuple[int, str]] = (), shards: int = 2, by: str = "hash",
                        rule: str = "each") -> dict[str, Any]:
    """`write_index` for each of `shards` parts of the rows (assigned `by` hash of the id or id ranges), under one
    top-level manifest; written under a temporary name and renamed at once, like a whole index. Returns the
    top-level manifest.

    Raises:
        IndexMismatchError: settings an index cannot be built with, or a shard that would get no row.
        FileExistsError: `out` exists and is not empty.
    """
    try:
        check_build(kind, sizes, vectors.shape[1], params, None if adanns is None else adanns[0], codes)
    except ValueError as exc:
        raise IndexMismatchError(str(exc)) from None
    starts = range_starts(ids, shards) if by == "range" else None
    assign = assign_shards(ids, shards, by, starts)
    counts = np.bincount(assign, minlength=shards)
    if not counts.all():
        raise IndexMismatchError(f"index.shards={shards} over {len(ids)} rows by {by} leaves shards "
                                 f"{np.flatnonzero(counts == 0).tolist()} empty; use fewer shards")
    out = Path(out)
    tmp = _temp_dir_for(out)
    try:
        listing = []
        for i in range(shards):
            rows = np.flatnonzero(assign == i)  # the rows keep their order: ties inside a shard by the lower id
            part = write_index(tmp / shard_dir(i), ids[rows], labels[rows], vectors[rows], sizes, kind,
                               {**extra, "shard": i, "shard_count": shards}, params, vector_dtype, adanns, codes)
            listing.append({"path": shard_dir(i), "rows": part["rows"], "id_min": int(ids[rows].min()),
                            "id_max": int(ids[rows].max()),
                            "manifest_sha256": sha256(tmp / shard_dir(i) / "manifest.json")})
        manifest = {"stage": "index", "dim": int(vectors.shape[1]), "sizes": list(sizes), "kind": kind,
                    "metric": METRIC, "dtype": np.dtype(vector_dtype).name, "rows": int(len(ids)),
                    "params": part["params"], "adanns": part["adanns"], "codes": part["codes"],
                    "shards": {"by": by, "rule": rule, "starts": starts, "list": listing}, "checksums": {}, **extra}
        write_manifest(tmp, manifest)
        publish_dir(tmp, out)
    finally:
        remove_dir(tmp)
    return read_manifest(out)


def is_sharded(manifest: dict[str, Any]) -> bool:
    """Whether an index manifest is a sharded index's top-level manifest."""
    return bool(manifest.get("shards"))


def shard_manifest(path: str | Path, shard: int) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(the top-level manifest, the directory and the manifest of shard `shard`) of the sharded index at `path`,
    the shard's manifest held to the sha256 the top-level one lists for it (its files are not opened).

    Raises:
        IndexMismatchError: not a sharded index, no such shard, or a shard manifest that is not the listed one.
    """
    path = artifact_location(path)  # local, or in object storage (`mrl lineage` checks shards there)
    try:
        top = read_manifest(path, stage="index")
    except ManifestError as exc:
        raise IndexMismatchError(str(exc)) from None
    if not is_sharded(top):
        raise IndexMismatchError(f"index {path} is not sharded: open it with load_index")
    listing = top["shards"]["list"]
    if not 0 <= shard < len(listing):
        raise IndexMismatchError(f"index {path} has shards 0..{len(listing) - 1}, not {shard}")
    where = storage.join(path, listing[shard]["path"])
    own = storage.join(where, "manifest.json")
    if listing[shard]["path"] != shard_dir(shard) or not storage.is_file(own) or \
            storage.sha256(own) != listing[shard]["manifest_sha256"]:
        raise IndexMismatchError(f"{where}/manifest.json does not match the checksum the top-level manifest of "
                                 f"{path} lists for shard {shard} (missing, modified or from another build)")
    return top, where, read_manifest(where, stage="index")


def load_shard(path: str | Path, shard: int, verify: bool = True, device: str = "cpu") -> IndexArtifact:
    """Open shard `shard` of the sharded index at `path`, held to the top-level manifest: the shard's manifest
    checksum, its index version, d, sizes and row count must be the ones listed there (`load_index` checks the
    shard's own files).

    Raises:
        IndexMismatchError: not a sharded index, no such shard, or a shard that does not match the listing.
    """
    top, where, _ = shard_manifest(path, shard)
    artifact = load_index(where, expect_dim=top["dim"], verify=verify, device=device)
    own = artifact.manifest
    if (own.get("index_run_id"), own.get("model_uri"), own["sizes"], own["rows"], own.get("shard")) != \
            (top.get("index_run_id"), top.get("model_uri"), top["sizes"], top["shards"]["list"][shard]["rows"], shard):
        raise IndexMismatchError(f"shard {shard} of {path} is not the one its top-level manifest lists (version "
                                 f"{own.get('index_run_id')}, model {own.get('model_uri')}, sizes {own['sizes']}, "
                                 f"{own['rows']} rows)")
    return artifact


def index_files(manifest: dict[str, Any]) -> list[str]:
    """The files `load_index` opens for this manifest (each must be listed in its checksums)."""
    files = ["vectors.npy", "ids.npy", "labels.npy", *(f"{index_source(m)}.faiss" for m in manifest["sizes"])]
    files += [name for size, code in manifest.get("codes") or () for name in code_files(code, size)]
    return files + (["adanns.npz"] if manifest.get("adanns") else [])


def _load_codes(path: Path, manifest: dict[str, Any]) -> list[CodeStore]:
    """The index's code stores, read into memory, each checked against the manifest's row count."""
    codes = [CodeStore.load(path, code, size) for size, code in manifest.get("codes") or ()]
    for store in codes:
        if len(store) != manifest["rows"]:
            raise IndexMismatchError(f"index {path}: {store.name} codes hold {len(store)} rows, the manifest says "
                                     f"{manifest['rows']}")
    return codes


@dataclass
class IndexDirectory:
    """An index directory and its manifest: what every reader of an index knows of it."""

    path: Path
    manifest: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def version(self) -> str:
        """The index's identity: the MLflow run that built it."""
        return str(self.manifest.get("index_run_id", self.path.name))


@dataclass
class IndexArtifact(IndexDirectory):
    """A loaded index directory: its manifest, row ids and labels, and the search engine over it."""

    ids: np.ndarray
    labels: np.ndarray
    engine: SearchEngine

    @property
    def vectors(self) -> np.ndarray:
        """(N, d) raw vectors, memory-mapped."""
        return self.engine.store.vectors


def load_index(path: str | Path, expect_dim: int | None = None, expect_model_uri: str | None = None,
               verify: bool = True, device: str = "cpu") -> IndexArtifact:
    """Open an index directory, checking it against its manifest and the caller's expectations.

    Args:
        path: the directory.
        expect_dim: refuse unless the index was built for vectors of this size.
        expect_model_uri: refuse unless the index was built from this model version.
        verify: check the sha256 of every listed file (every file opened must be listed either way).
        device: cpu, gpu or auto (faiss-gpu indexes, CUDA rerank store).

    Raises:
        FileNotFoundError: not an index directory.
        IndexMismatchError: format version, a file opened but not listed in the manifest (or listed under a name
            that is not a plain file name), checksum, shape, dimension or model mismatch.
    """
    import faiss

    path = Path(path).resolve()
    try:
        manifest = read_manifest(path, stage="index")
    except ManifestError as exc:
        raise IndexMismatchError(str(exc)) from None
    if is_sharded(manifest):
        raise IndexMismatchError(f"index {path} is sharded ({len(manifest['shards']['list'])} shards): open a shard "
                                 "with load_shard, or serve it (the service deploys one shard deployment each)")
    if expect_dim is not None and manifest["dim"] != expect_dim:
        raise IndexMismatchError(f"index {path} was built for d={manifest['dim']} vectors, not d={expect_dim}")
    if expect_model_uri is not None and manifest.get("model_uri") != expect_model_uri:
        raise IndexMismatchError(f"index {path} was built for model {manifest.get('model_uri')!r}, "
                                 f"not {expect_model_uri!r}")
    try:
        verify_files(path, manifest.get("checksums") or {}, index_files(manifest), verify)
    except ManifestError as exc:
        raise IndexMismatchError(f"index {exc}") from None
    vectors = np.load(path / "vectors.npy", mmap_mode="r")
    ids, labels = np.load(path / "ids.npy"), np.load(path / "labels.npy")
    if vectors.dtype.name != manifest.get("dtype", "float32"):
        raise IndexMismatchError(f"index {path}: vectors.npy holds {vectors.dtype.name}, the manifest says "
                                 f"{manifest.get('dtype')}")
    if vectors.shape != (manifest["rows"], manifest["dim"]) or len(ids) != manifest["rows"]:
        raise IndexMismatchError(f"index {path}: vectors {vectors.shape} / ids {len(ids)} do not match the "
                                 f"manifest's {manifest['rows']} rows x d={manifest['dim']}")
    sources: dict[str, Any] = {}
    for m in manifest["sizes"]:
        file = path / f"{index_source(m)}.faiss"
        if manifest["kind"] in BINARY_KINDS:
            index = faiss.read_index_binary(str(file))
        else:
            index = faiss.read_index(str(file), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        if index.d != m or index.ntotal != manifest["rows"]:
            raise IndexMismatchError(f"{file} has d={index.d}, rows={index.ntotal}; "
                                     f"the manifest says d={m}, rows={manifest['rows']}")
        sources[index_source(m)] = FaissSource(index, m, manifest["kind"], device)
    if manifest.get("adanns"):
        # members scored by FAISS from IVF lists built from the vectors on first use of a rerank size
        sources[ADANNS_SOURCE] = CellSource(AdannsIVF.load(path / "adanns.npz"), vectors)
    engine = SearchEngine(PrefixStore(vectors, device=torch_device(device)), sources, _load_codes(path, manifest))
    return IndexArtifact(path, manifest, ids, labels, engine)
