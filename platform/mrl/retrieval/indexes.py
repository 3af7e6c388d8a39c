"""FAISS indexes over one normalised prefix, one builder per index kind (the `INDEX_KINDS` registry).

Every index scores by inner product of L2-normalised prefixes (cosine). Rows are normalised and added in
blocks, so the database may be float16 or a memory map and a build never holds a second float32 copy.
Binary kinds (`binary_flat`, `binary_hnsw`, `binary_ivf`) hold one sign bit per dimension of the prefix
(`mrl.retrieval.codes.binary_codes`, m / 8 bytes a row) and rank by Hamming distance; their scores are minus
that distance. Search-time knobs (IVF `nprobe`, HNSW `efSearch`) are passed per call as FAISS search parameters, so
concurrent searches with different settings never leak into each other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mrl.registry import Registry
from mrl.retrieval.codes import binary_codes
from mrl.retrieval.topk import normalize_prefix

log = logging.getLogger("mrl.retrieval")

ADD_BLOCK_ROWS = 1 << 16  # rows normalised and added at a time: a 1M x 2048 build never holds two float32 copies


@dataclass(frozen=True, kw_only=True)
class IndexParams:
    """Build and default search settings of a prefix index (the fields a kind does not use are ignored): the one
    declaration of them, which `IndexConfig` (the defaults of every size) and `SizeIndexParams` (one size's
    overrides) take their fields from."""

    hnsw_m: int = 32
    """HNSW graph degree."""
    ef_construction: int = 40
    """HNSW build breadth."""
    ef_search: int = 128
    """HNSW default search breadth (a request's or a plan's ef_search still overrides it)."""
    storage: Literal["float32", "float16", "int8", "int4"] = "float32"
    """How an HNSW graph or an IVF's lists hold their vectors: float32, float16 (half the bytes per vector; the
    query stays float32, and FAISS widens each vector as it scores it), int8 or int4 (a quarter or an eighth:
    FAISS's 8- or 4-bit scalar quantiser, per-dimension ranges trained on a sample). IVF-PQ and the binary kinds
    ignore it."""
    nlist: int = 1024
    """IVF cells (capped at N / 39, FAISS's minimum points per centroid)."""
    nprobe: int = 16
    """IVF cells searched."""
    train_per_cell: int = 256
    """IVF k-means trains on a seeded sample of at most this many rows per cell (256: FAISS's own cap). Binary
    IVF's k-means runs on the unpacked bits (m floats a row), so fewer rows and `kmeans_iters` cut its build:
    1M x 1024 bits into 2,048 cells trains in ~25 s from 64 rows a cell and 10 iterations, against ~5 min at
    FAISS's defaults for 4,096 cells (2 cores)."""
    kmeans_iters: int = 25
    """IVF k-means iterations (FAISS's default 25)."""
    pq_m: int = 16
    """IVF-PQ sub-quantisers; must divide the prefix size."""
    pq_bits: int = 8
    """IVF-PQ bits per code."""
    seed: int = 0
    """k-means and sampling seed."""


INDEX_KINDS: Registry = Registry("index kind")
STORAGE_DTYPES = ("float32", "float16", "int8", "int4")
BINARY_KINDS = ("binary_flat", "binary_hnsw", "binary_ivf")
TRAIN_SAMPLE_ROWS = 100_000  # rows an 8-bit scalar quantiser's ranges are trained on


def check_prefix_size(what: str, size: int, dim: int) -> None:
    """A structure built on prefix `size` (an index, AdANNS cells) needs 1 <= size <= d; raises ValueError
    naming `what` (e.g. "index size", "index.adanns_size")."""
    if not 1 <= size <= dim:
        raise ValueError(f"{what} {size} is outside [1, d={dim}] of these vectors")


def check_index(kind: str, size: int, dim: int, params: IndexParams) -> None:
    """The rules between an index's kind, its prefix size and the vectors' d, checked before any build.

    Raises:
        ValueError: naming the problem (size outside [1, d], pq_m not dividing the size, unknown kind).
    """
    INDEX_KINDS.get(kind)
    check_prefix_size("index size", size, dim)
    if params.storage not in STORAGE_DTYPES:
        raise ValueError(f"storage {params.storage!r} is not accepted; choose one of {sorted(STORAGE_DTYPES)}")
    if kind in BINARY_KINDS and size % 8:
        raise ValueError(f"{kind} holds sign bits in whole bytes: the prefix size must be a multiple of 8, got {size}")
    if kind == "ivfpq" and size % params.pq_m:
        raise ValueError(f"ivfpq needs pq_m dividing the prefix size: pq_m={params.pq_m} does not divide {size}")


def build_prefix_index(database: np.ndarray, size: int, kind: str = "flat", params: IndexParams | None = None):
    """A FAISS inner-product index of `kind` over the normalised prefix `size` of `database` (N, d)."""
    params = params or IndexParams()
    check_index(kind, size, database.shape[1], params)
    index = INDEX_KINDS.get(kind)(database, size, params)
    encode = binary_codes if kind in BINARY_KINDS else normalize_prefix
    n = len(database)
    for lo in range(0, n, ADD_BLOCK_ROWS):
        index.add(encode(database[lo:lo + ADD_BLOCK_ROWS], size))
        if n > 4 * ADD_BLOCK_ROWS:
            log.info("%s index at %d dims: %d / %d rows added", kind, size, min(n, lo + ADD_BLOCK_ROWS), n)
    return index


@INDEX_KINDS.register("flat")
def _flat(database: np.ndarray, size: int, params: IndexParams):
    """Exact search."""
    import faiss

    return faiss.IndexFlatIP(size)


def _sample_prefix(database: np.ndarray, size: int, rows: int, seed: int) -> np.ndarray:
    """Normalised prefixes of a seeded sample of at most `rows` rows (in position order)."""
    n = len(database)
    pick = np.sort(np.random.default_rng(seed).permutation(n)[:rows]) if n > rows else slice(None)
    return normalize_prefix(np.asarray(database[pick]), size)


SQ_TYPES = {"float16": "QT_fp16", "int8": "QT_8bit", "int4": "QT_4bit"}


@INDEX_KINDS.register("hnsw")
def _hnsw(database: np.ndarray, size: int, params: IndexParams):
    """Graph search (HNSW), nodes' vectors held as float32, float16 or int8 (`params.storage`)."""
    import faiss

    if params.storage in SQ_TYPES:
        qtype = getattr(faiss.ScalarQuantizer, SQ_TYPES[params.storage])
        index = faiss.IndexHNSWSQ(size, qtype, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.train(_sample_prefix(database, size, TRAIN_SAMPLE_ROWS, params.seed))  # int8: per-dimension ranges
    else:
        index = faiss.IndexHNSWFlat(size, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = params.ef_search
    index.hnsw.efConstruction = params.ef_construction
    return index


def _trained_ivf(database: np.ndarray, size: int, params: IndexParams, pq: bool):
    """IVF (exact vectors) or IVF-PQ (product-quantised vectors), k-means trained on a seeded sample of at most
    256 rows per cell (FAISS's own cap; IVF-PQ at least 256 per PQ centroid, for its codebooks)."""
    import faiss

    n = len(database)
    cells = max(1, min(params.nlist, n // 39))
    quantizer = faiss.IndexFlatIP(size)
    if pq:
        index = faiss.IndexIVFPQ(quantizer, size, cells, params.pq_m, params.pq_bits, faiss.METRIC_INNER_PRODUCT)
    elif params.storage in SQ_TYPES:
        index = faiss.IndexIVFScalarQuantizer(quantizer, size, cells,
                                              getattr(faiss.ScalarQuantizer, SQ_TYPES[params.storage]),
                                              faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFFlat(quantizer, size, cells, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = params.seed
    index.cp.niter = params.kmeans_iters
    cap = max(params.train_per_cell * cells, 256 * 2 ** params.pq_bits) if pq else params.train_per_cell * cells
    sample = np.sort(np.random.default_rng(params.seed).permutation(n)[:cap]) if n > cap else slice(None)
    index.train(normalize_prefix(database[sample], size))
    index.nprobe = min(params.nprobe, cells)
    return index


@INDEX_KINDS.register("ivf")
def _ivf(database: np.ndarray, size: int, params: IndexParams):
    """Inverted lists over k-means cells, exact vectors."""
    return _trained_ivf(database, size, params, pq=False)


@INDEX_KINDS.register("ivfpq")
def _ivfpq(database: np.ndarray, size: int, params: IndexParams):
    """Inverted lists with product-quantised vectors."""
    return _trained_ivf(database, size, params, pq=True)


@INDEX_KINDS.register("binary_flat")
def _binary_flat(database: np.ndarray, size: int, params: IndexParams):
    """Exact Hamming search over the prefix's sign bits."""
    import faiss

    return faiss.IndexBinaryFlat(size)


@INDEX_KINDS.register("binary_hnsw")
def _binary_hnsw(database: np.ndarray, size: int, params: IndexParams):
    """Graph search (HNSW) over the prefix's sign bits, by Hamming distance."""
    import faiss

    index = faiss.IndexBinaryHNSW(size, params.hnsw_m)
    index.hnsw.efSearch = params.ef_search
    index.hnsw.efConstruction = params.ef_construction
    return index


@INDEX_KINDS.register("binary_ivf")
def _binary_ivf(database: np.ndarray, size: int, params: IndexParams):
    """Inverted lists of sign bits over Hamming k-means cells (trained on a seeded sample of at most
    `train_per_cell` rows a cell, `kmeans_iters` iterations, as the float IVF)."""
    import faiss

    n = len(database)
    cells = max(1, min(params.nlist, n // 39))
    index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(size), size, cells)
    index.cp.seed = params.seed
    index.cp.niter = params.kmeans_iters
    cap = params.train_per_cell * cells
    sample = np.sort(np.random.default_rng(params.seed).permutation(n)[:cap]) if n > cap else slice(None)
    index.train(binary_codes(np.asarray(database[sample]), size))
    index.nprobe = min(params.nprobe, cells)
    return index


def is_binary(index) -> bool:
    """Whether `index` is a FAISS binary index (searched with sign-bit codes, by Hamming distance)."""
    import faiss

    return isinstance(index, faiss.IndexBinary)


def search_params(index, nprobe: int | None = None, ef_search: int | None = None):
    """FAISS per-call search parameters for `index` overriding nprobe (IVF, CPU or GPU, float or binary) /
    efSearch (HNSW, float or binary), or None (no override asked, or a knob the index does not have, e.g.
    nprobe of a flat index)."""
    import faiss

    ivf = (faiss.IndexIVF, faiss.IndexBinaryIVF) + ((faiss.GpuIndexIVF,) if hasattr(faiss, "GpuIndexIVF") else ())
    if nprobe is not None and isinstance(index, ivf):
        return faiss.SearchParametersIVF(nprobe=nprobe)
    if ef_search is not None and isinstance(index, (faiss.IndexHNSW, faiss.IndexBinaryHNSW)):
        return faiss.SearchParametersHNSW(efSearch=ef_search)
    return None


def faiss_search(index, queries: np.ndarray, size: int, k: int, nprobe: int | None = None,
                 ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search `index` (built on prefix `size`) with normalised query prefixes: (scores, positions) (Q, k).

    A binary index is searched with the queries' sign bits; its scores are minus the Hamming distances, each
    row sorted by (distance, position), and a flat binary index's top-k is exact with ties by the lower position.
    A float index's rows are sorted by (score, position) (which tied rows make the k-th place is FAISS's).

    Args:
        nprobe, ef_search: per-call overrides of the index's own IVF / HNSW settings (None: the index's).
    """
    import faiss

    k = min(k, index.ntotal)
    params = search_params(index, nprobe, ef_search)
    if is_binary(index):
        codes = binary_codes(queries, size)
        distances, positions = index.search(codes, k, params=params)
        if isinstance(index, faiss.IndexBinaryFlat):
            distances, positions = _with_ties_by_lower_position(index, codes, distances, positions)
        distances, positions = _by_distance_then_position(distances, positions)
        return np.where(positions >= 0, -distances.astype(np.float32), -np.inf).astype(np.float32), positions
    unit = normalize_prefix(queries, size)
    scores, positions = index.search(unit, k) if params is None else index.search(unit, k, params=params)
    return _by_score_then_position(scores, positions)


def _by_score_then_position(scores: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of a float search sorted by (score descending, position), empty slots (-1) last: FAISS leaves
    equal scores (duplicate rows) in heap order, and shards merged by id must meet the whole index's order. Only
    rows holding a tie are sorted again (a full sort cost 13 ms per 1,000 queries x 200 candidates here)."""
    tied = np.flatnonzero((scores[:, 1:] == scores[:, :-1]).any(axis=1))  # FAISS sorts by score: ties are adjacent
    if not tied.size:
        return scores, positions
    scores, positions = scores.copy(), positions.copy()
    s, p = scores[tied], positions[tied]
    found = p >= 0
    order = np.lexsort((np.where(found, p, np.iinfo(np.int64).max), np.where(found, -s, np.inf)), axis=1)
    scores[tied], positions[tied] = np.take_along_axis(s, order, 1), np.take_along_axis(p, order, 1)
    return scores, positions


def _by_distance_then_position(distances: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of a Hamming search sorted by (distance, position), empty slots (-1) last: integer distances
    tie often, and FAISS leaves tied candidates in heap order."""
    key = np.where(positions >= 0, distances.astype(np.int64) * (1 << 40) + positions, np.iinfo(np.int64).max)
    order = np.argsort(key, axis=1, kind="stable")
    return np.take_along_axis(distances, order, 1), np.take_along_axis(positions, order, 1)


def _with_ties_by_lower_position(index, codes: np.ndarray, distances: np.ndarray, positions: np.ndarray
                                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming top-k with ties by the lower position: FAISS's flat search keeps an arbitrary subset of the
    rows tied at the k-th distance, so every row within that distance is fetched (a range search per query)
    and the best k by (distance, position) kept."""
    k = positions.shape[1]
    out_d, out_p = distances.copy(), positions.copy()
    for i in range(len(codes)):
        found = positions[i] >= 0
        if not found.any():
            continue
        _, dist, ids = index.range_search(codes[i:i + 1], int(distances[i][found].max()) + 1)  # all with d <= k-th
        best = np.lexsort((ids, dist))[:k]
        out_d[i, :len(best)], out_p[i, :len(best)] = dist[best], ids[best]
    return out_d, out_p


def index_bytes(index) -> int:
    """Bytes a CPU FAISS index holds for its data: vector codes, graph links, inverted lists with their ids,
    coarse centroids (what memory per vector counts; Python and allocator overheads are not included)."""
    import faiss

    if is_binary(index):
        return _binary_bytes(index)
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        return _link_bytes(index.hnsw) + index_bytes(index.storage)
    if isinstance(index, faiss.IndexIVF):
        return index.ntotal * (index.invlists.code_size + 8) + index_bytes(index.quantizer)  # codes and ids
    if isinstance(index, faiss.IndexFlatCodes):
        return index.ntotal * index.code_size
    raise TypeError(f"index_bytes does not know {type(index).__name__}")


def _link_bytes(graph) -> int:
    """Bytes of an HNSW graph's links: neighbour ids, per-node offsets and levels."""
    return graph.neighbors.size() * 4 + graph.offsets.size() * 8 + graph.levels.size() * 4


def _binary_bytes(index) -> int:
    import faiss

    index = faiss.downcast_IndexBinary(index)
    if isinstance(index, faiss.IndexBinaryHNSW):
        return _link_bytes(index.hnsw) + _binary_bytes(index.storage)
    if isinstance(index, faiss.IndexBinaryIVF):
        return index.ntotal * (index.code_size + 8) + _binary_bytes(index.quantizer)
    if isinstance(index, faiss.IndexBinaryFlat):
        return index.ntotal * index.code_size
    raise TypeError(f"index_bytes does not know {type(index).__name__}")


def gpu_count() -> int:
    """GPUs FAISS can use (0 with faiss-cpu)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def to_device(index, device: str = "auto"):
    """Move a FAISS index to all GPUs when asked (or when `auto` and faiss-gpu sees one); else unchanged.

    Flat and IVF indexes move; HNSW and the binary kinds stay on the CPU (faiss-gpu has no HNSW, and its binary
    flat index alone would not serve the binary graph or lists).
    """
    import faiss

    gpus = gpu_count()
    if device == "gpu" and gpus == 0:
        raise RuntimeError("device is 'gpu' but FAISS sees no GPU (is faiss-gpu installed?)")
    if device in ("gpu", "auto") and gpus > 0 and not isinstance(index, (faiss.IndexHNSW, faiss.IndexBinary)):
        return faiss.index_cpu_to_all_gpus(index)
    return index
