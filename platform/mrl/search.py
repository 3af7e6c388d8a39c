"""Exact and adaptive search over L2-normalised prefixes, batched over queries.

Scores are inner products of separately L2-normalised prefixes (cosine similarity at that size).
Ties are broken by the lower database position, in the numpy reference and in the rerank step.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("mrl.search")


def normalize_prefix(x: np.ndarray, m: int) -> np.ndarray:
    """x[:, :m] / ||x[:, :m]||, float32 (N, m); an all-zero prefix stays zero.

    Rows whose float32 norm overflows (values ~1e19 and up) or underflows (~1e-23 and down) get their norm
    in float64, so every finite nonzero row comes out unit length.
    """
    p = np.ascontiguousarray(np.asarray(x)[:, :m], dtype=np.float32)
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(p, axis=1, keepdims=True)
    out = p / np.where(norms > 0, norms, 1.0)  # a new array: `p` may be a view of the caller's input
    odd = np.flatnonzero(~(norms[:, 0] < np.inf) | (norms[:, 0] < 1e-18))  # inf/NaN, tiny or zero norms
    if len(odd):
        wide = p[odd].astype(np.float64)
        wide_norms = np.linalg.norm(wide, axis=1, keepdims=True)
        out[odd] = wide / np.where(wide_norms > 0, wide_norms, 1.0)
    return out


def top_k(scores: np.ndarray, k: int, ids: np.ndarray | None = None, sort: bool = True
          ) -> tuple[np.ndarray, np.ndarray]:
    """Best k per row of scores (Q, N), descending, ties by lower column (or lower `ids` value, (Q, N)).

    sort=False returns the same k entries in no particular order (a funnel's intermediate cut needs the set,
    not its order).

    Scores are compared as float32 (every score here is float32; NaN must not occur). Scores and tie ids
    are packed into one int64 key per entry (order-preserving float bits, then the id),
    so a partial selection plus a sort of the k survivors is exact, tie order included. Ids outside
    [0, 2^32) other than the int64-max "empty" marker fall back to a full lexicographic sort.

    Returns:
        (scores (Q, k'), columns (Q, k')) with k' = min(k, N).
    """
    q, n = scores.shape
    k = min(k, n)
    tie = np.broadcast_to(np.arange(n), scores.shape) if ids is None else np.asarray(ids)
    empty = tie == np.iinfo(np.int64).max
    if n and (tie[~empty].min(initial=0) < 0 or tie[~empty].max(initial=0) >= 0xFFFFFFFF):
        order = np.lexsort((tie, -scores), axis=1)[:, :k]  # primary key: -score, secondary: tie
        return np.take_along_axis(scores, order, axis=1), order
    bits = (np.asarray(-scores, dtype=np.float32) + np.float32(0.0)).view(np.int32).astype(np.int64)  # -0.0 -> 0.0
    bits ^= (bits >> 31) & 0x7FFFFFFF  # float order -> signed integer order
    key = (bits << 32) | np.where(empty, 0xFFFFFFFF, tie).astype(np.int64)
    part = np.argpartition(key, k - 1, axis=1)[:, :k] if 0 < k < n else np.broadcast_to(np.arange(k), (q, k))
    if not sort:
        return np.take_along_axis(scores, part, axis=1), part
    order = np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, axis=1), axis=1, kind="stable"), axis=1)
    return np.take_along_axis(scores, order, axis=1), order


def exact_search(database: np.ndarray, queries: np.ndarray, k: int, size: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force reference: top-k database rows by cosine on the first `size` dims (default all).

    Returns:
        (scores (Q, k'), positions (Q, k')).
    """
    size = size or database.shape[1]
    scores = normalize_prefix(queries, size) @ normalize_prefix(database, size).T  # (Q, N)
    return top_k(scores, k)


RERANK_BLOCK_FLOATS = 1 << 20  # ~4 MiB of float32 candidate rows per block: stays in cache, 2-3x faster than 128 MiB


class PrefixStore:
    """Full-size vectors kept for exact rescoring of any prefix.

    `vectors` (N, d) may be float16 or float32 and may be a read-only memory map: only candidate rows are
    read. Scoring prefix m gathers the candidates' first m columns (a strided `index_select` in PyTorch, far
    faster than numpy's fancy indexing), widens them to float32, and divides their dot product with the unit
    query prefix by their own norm, computed from the gathered rows while they are in cache (as fast as
    looking up stored norms, which cost a second random read per candidate).
    """

    def __init__(self, vectors: np.ndarray, device: str = "cpu"):
        """`device` "cuda" copies the rows to the GPU (gathers and products run there); "cpu" keeps them where
        they are (a memory map stays a memory map)."""
        import warnings

        import torch

        vectors = np.asarray(vectors) if not isinstance(vectors, np.memmap) else vectors
        if vectors.dtype not in (np.float16, np.float32):
            vectors = vectors.astype(np.float32)
        if not vectors.flags["C_CONTIGUOUS"]:
            vectors = np.ascontiguousarray(vectors)
        self.vectors = vectors
        with warnings.catch_warnings():  # read-only memory maps: torch warns, but nothing here writes
            warnings.simplefilter("ignore", UserWarning)
            self._rows = torch.from_numpy(vectors)
        self.device = torch.device(device)
        if self.device.type != "cpu":
            self._rows = self._rows.to(self.device)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def score(self, positions: np.ndarray, unit_queries: np.ndarray, size: int) -> np.ndarray:
        """Cosine at prefix `size` between each query (Q, size), already unit-norm, and its rows (Q, K): (Q, K).

        A zero prefix scores 0.
        """
        import torch

        q, kk = positions.shape
        rows = torch.from_numpy(np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)).to(self.device)
        cand = self._rows[:, :size].index_select(0, rows).view(q, kk, size).float()
        unit = torch.from_numpy(np.ascontiguousarray(unit_queries, np.float32)).to(self.device)
        raw = (cand * unit[:, None, :]).sum(-1)  # faster than bmm for these thin batched products
        norms = torch.linalg.vector_norm(cand, dim=-1)
        return torch.where(norms > 0, raw / norms.clamp_min(1e-30), torch.zeros_like(raw)).cpu().numpy()


def as_store(database) -> PrefixStore:
    """A `PrefixStore` as is; an array wrapped in one."""
    return database if isinstance(database, PrefixStore) else PrefixStore(database)


def rerank(candidates: np.ndarray, database, queries: np.ndarray, size: int, k: int, sort: bool = True
           ) -> tuple[np.ndarray, np.ndarray]:
    """Rescore shortlisted database positions exactly with prefix `size` and keep the best k.

    Args:
        candidates: (Q, K) database positions, -1 for an empty slot.
        database: a `PrefixStore`, or (N, >= size) raw vectors (may be a memory map; only candidate rows are read).
        queries: (Q, >= size) raw query vectors.
        size: rerank prefix size D_r.
        k: results kept.
        sort: False keeps the same k candidates unordered (cheaper, for a funnel's intermediate stages).

    Returns:
        (scores (Q, k'), positions (Q, k')), k' = min(k, K); empty slots come last with score -inf, id -1
        (when sorted).
    """
    store = as_store(database)
    q, kk = candidates.shape
    safe = np.where(candidates >= 0, candidates, 0)
    q_norm = normalize_prefix(queries, size)
    scores = np.empty((q, kk), dtype=np.float32)
    step = max(1, RERANK_BLOCK_FLOATS // max(1, kk * size))  # query rows per block: bounded memory
    width = kk if kk * size <= RERANK_BLOCK_FLOATS else max(1, RERANK_BLOCK_FLOATS // size)  # long shortlists
    for lo in range(0, q, step):  # blocks of many queries each, vectorised within a block
        for c0 in range(0, kk, width):
            scores[lo:lo + step, c0:c0 + width] = store.score(safe[lo:lo + step, c0:c0 + width],
                                                              q_norm[lo:lo + step], size)
    scores = np.where(candidates >= 0, scores, -np.inf).astype(np.float32)
    tie = np.where(candidates >= 0, candidates, np.iinfo(np.int64).max)
    best_scores, order = top_k(scores, k, ids=tie, sort=sort)
    positions = np.take_along_axis(candidates, order, axis=1)
    return best_scores, np.where(np.isfinite(best_scores), positions, -1)


INDEX_KINDS = ("flat", "hnsw", "ivf", "ivfpq")


ADD_BLOCK_ROWS = 1 << 16  # rows normalised and added at a time: a 1M x 2048 build never holds two float32 copies


def build_prefix_index(database: np.ndarray, size: int, kind: str = "flat", *, hnsw_m: int = 32,
                       ef_search: int = 128, ef_construction: int = 40, nlist: int = 1024, nprobe: int = 16,
                       pq_m: int = 16, pq_bits: int = 8, seed: int = 0):
    """A FAISS inner-product index over the normalised prefix `size` of `database` (N, d).

    Rows are normalised and added in blocks of `ADD_BLOCK_ROWS`, so `database` may be float16 or a memory map
    and the build holds only the index plus one block. IVF k-means trains on a seeded sample of at most 256
    rows per cell (FAISS's own cap; IVF-PQ at least 256 per PQ centroid, for its codebooks).

    Args:
        kind: flat (exact), hnsw (graph), ivf (inverted lists over k-means cells, exact vectors) or ivfpq
            (inverted lists with product-quantised vectors).
        hnsw_m, ef_search, ef_construction: HNSW graph degree, search breadth and build breadth.
        nlist, nprobe: IVF cells (capped at N / 39, FAISS's minimum points per centroid) and cells searched.
        pq_m, pq_bits: IVF-PQ sub-quantisers (must divide `size`) and bits per code.
    """
    import faiss

    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind {kind!r} is not accepted; choose one of {list(INDEX_KINDS)}")
    n = len(database)
    if kind == "flat":
        index = faiss.IndexFlatIP(size)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(size, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
        index.hnsw.efConstruction = ef_construction
    else:
        cells = max(1, min(nlist, n // 39))
        quantizer = faiss.IndexFlatIP(size)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, size, cells, faiss.METRIC_INNER_PRODUCT)
        else:
            if size % pq_m:
                raise ValueError(f"ivfpq needs pq_m dividing the prefix size: {pq_m} does not divide {size}")
            index = faiss.IndexIVFPQ(quantizer, size, cells, pq_m, pq_bits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        cap = 256 * cells if kind == "ivf" else max(256 * cells, 256 * 2 ** pq_bits)  # PQ codebooks need their own
        sample = np.sort(np.random.default_rng(seed).permutation(n)[:cap]) if n > cap else slice(None)
        index.train(normalize_prefix(database[sample], size))
        index.nprobe = min(nprobe, cells)
    for lo in range(0, n, ADD_BLOCK_ROWS):
        index.add(normalize_prefix(database[lo:lo + ADD_BLOCK_ROWS], size))
        if n > 4 * ADD_BLOCK_ROWS:
            log.info("%s index at %d dims: %d / %d rows added", kind, size, min(n, lo + ADD_BLOCK_ROWS), n)
    return index


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k merge of per-shard results (each (scores (Q, k_i), global ids (Q, k_i)), -1 = empty).

    Ties are broken by the lower id, as in every exact search here.

    Returns:
        (scores (Q, k'), ids (Q, k')), k' = min(k, sum of k_i); empty slots last with id -1.
    """
    scores = np.concatenate([np.where(ids >= 0, s, -np.inf) for s, ids in parts], axis=1).astype(np.float32)
    ids = np.concatenate([ids for _, ids in parts], axis=1)
    tie = np.where(ids >= 0, ids, np.iinfo(np.int64).max)
    best, order = top_k(scores, k, ids=tie)
    merged = np.take_along_axis(ids, order, axis=1)
    return best, np.where(np.isfinite(best), merged, -1)


def funnel_search(first_index, database: np.ndarray, queries: np.ndarray,
                  stages: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """MRL funnel: the first (size, K) stage searches `first_index` (built on that prefix size); every later
    (size, K) stage reranks the previous candidates exactly with that prefix and keeps K.

    Args:
        stages: e.g. [(16, 200), (32, 100), (64, 50), (128, 25), (256, 10), (512, 10)]; sizes increasing,
            shortlist lengths non-increasing.

    Returns:
        (scores (Q, K_last), positions (Q, K_last)).
    """
    if not stages:
        raise ValueError("funnel needs at least one (size, shortlist) stage")
    sizes, lengths = [s for s, _ in stages], [k for _, k in stages]
    if sizes != sorted(sizes) or lengths != sorted(lengths, reverse=True):
        raise ValueError(f"funnel stages {stages}: sizes must increase and shortlists must not grow")
    scores, candidates = faiss_search(first_index, queries, sizes[0], lengths[0])
    if len(stages) == 1:
        return scores, candidates
    return rerank_stages(candidates, database, queries, stages[1:])


def default_funnel(shortlist_size: int, shortlist_k: int, dim: int, k: int) -> list[tuple[int, int]]:
    """Rerank stages after a (shortlist_size, shortlist_k) shortlist: sizes double up to d, keeps halve to k.

    E.g. (16, 200, d=2048, k=10): 32/100, 64/50, 128/25, 256/12, 512/10, 1024/10, 2048/10.
    """
    stages, size, keep = [], 2 * shortlist_size, shortlist_k
    while size < dim:
        keep = max(k, keep // 2)
        stages.append((size, keep))
        size *= 2
    stages.append((dim, k))
    return stages


def rerank_stages(candidates: np.ndarray, database, queries: np.ndarray, stages: list[tuple[int, int]]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Rerank `candidates` (Q, K) through (size, keep) stages in turn; returns the last stage's (scores, positions)."""
    if not stages:
        raise ValueError("rerank_stages needs at least one (size, keep) stage")
    store = as_store(database)
    scores = None
    for i, (size, keep) in enumerate(stages):
        scores, candidates = rerank(candidates, store, queries, size, keep, sort=i == len(stages) - 1)
    return scores, candidates


def gpu_count() -> int:
    """GPUs FAISS can use (0 with faiss-cpu)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def torch_device(device: str) -> str:
    """The rerank store's PyTorch device for a cpu | gpu | auto setting (auto: CUDA when PyTorch sees it)."""
    import torch

    if device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("device is 'gpu' but PyTorch sees no CUDA device")
    return "cuda" if device in ("gpu", "auto") and torch.cuda.is_available() else "cpu"


def to_device(index, device: str = "auto"):
    """Move a FAISS index to all GPUs when asked (or when `auto` and faiss-gpu sees one); else unchanged.

    Flat and IVF indexes move; HNSW stays on the CPU (faiss-gpu has no HNSW).
    """
    import faiss

    gpus = gpu_count()
    if device == "gpu" and gpus == 0:
        raise RuntimeError("index.device is 'gpu' but FAISS sees no GPU (is faiss-gpu installed?)")
    if device in ("gpu", "auto") and gpus > 0 and not isinstance(index, faiss.IndexHNSW):
        return faiss.index_cpu_to_all_gpus(index)
    return index


def faiss_search(index, queries: np.ndarray, size: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search `index` (built on prefix `size`) with normalised query prefixes: (scores, positions) (Q, k)."""
    k = min(k, index.ntotal)
    scores, positions = index.search(normalize_prefix(queries, size), k)
    return scores, positions


def adaptive_search(shortlist_index, database: np.ndarray, queries: np.ndarray, shortlist_size: int,
                    shortlist_k: int, rerank_size: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """MRL adaptive retrieval: shortlist K with prefix D_s through FAISS, rerank exactly with prefix D_r.

    Returns:
        (scores (Q, k'), positions (Q, k')).
    """
    _, candidates = faiss_search(shortlist_index, queries, shortlist_size, shortlist_k)
    return rerank(candidates, database, queries, rerank_size, k)
