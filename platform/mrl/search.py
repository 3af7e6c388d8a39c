"""Exact and adaptive search over L2-normalised prefixes, batched over queries.

Scores are inner products of separately L2-normalised prefixes (cosine similarity at that size).
Ties are broken by the lower database position, in the numpy reference and in the rerank step.
"""

from __future__ import annotations

import numpy as np


def normalize_prefix(x: np.ndarray, m: int) -> np.ndarray:
    """x[:, :m] / ||x[:, :m]||, float32 (N, m); an all-zero prefix stays zero."""
    p = np.ascontiguousarray(np.asarray(x)[:, :m], dtype=np.float32)
    norms = np.linalg.norm(p, axis=1, keepdims=True)
    return p / np.where(norms > 0, norms, 1.0)


def top_k(scores: np.ndarray, k: int, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best k per row of scores (Q, N), descending, ties by lower column (or lower `ids` value, (Q, N)).

    Returns:
        (scores (Q, k'), columns (Q, k')) with k' = min(k, N).
    """
    k = min(k, scores.shape[1])
    tie = np.broadcast_to(np.arange(scores.shape[1]), scores.shape) if ids is None else ids
    order = np.lexsort((tie, -scores), axis=1)[:, :k]  # primary key: -score, secondary: tie
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


def rerank(candidates: np.ndarray, database: np.ndarray, queries: np.ndarray, size: int, k: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Rescore shortlisted database positions exactly with prefix `size` and keep the best k.

    Args:
        candidates: (Q, K) database positions, -1 for an empty slot.
        database: (N, >= size) raw vectors (may be a memory map; only candidate rows are read).
        queries: (Q, >= size) raw query vectors.
        size: rerank prefix size D_r.
        k: results kept.

    Returns:
        (scores (Q, k'), positions (Q, k')), k' = min(k, K); empty slots come last with score -inf, id -1.
    """
    q, kk = candidates.shape
    safe = np.where(candidates >= 0, candidates, 0)
    cand = normalize_prefix(np.asarray(database[safe.ravel()]), size).reshape(q, kk, size)  # (Q, K, D_r)
    scores = np.einsum("qkd,qd->qk", cand, normalize_prefix(queries, size))  # (Q, K)
    scores = np.where(candidates >= 0, scores, -np.inf).astype(np.float32)
    tie = np.where(candidates >= 0, candidates, np.iinfo(np.int64).max)
    best_scores, order = top_k(scores, k, ids=tie)
    positions = np.take_along_axis(candidates, order, axis=1)
    return best_scores, np.where(np.isfinite(best_scores), positions, -1)


def build_flat_index(database: np.ndarray, size: int, kind: str = "flat", hnsw_m: int = 32):
    """A FAISS inner-product index over the normalised prefix `size` of `database` (N, d).

    Args:
        kind: flat (exact) or hnsw.
    """
    import faiss

    vectors = normalize_prefix(database, size)
    if kind == "flat":
        index = faiss.IndexFlatIP(size)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(size, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"index kind {kind!r} is not accepted; choose one of ['flat', 'hnsw']")
    index.add(vectors)
    return index


def to_device(index, device: str = "auto"):
    """Move a FAISS index to all GPUs when asked (or when `auto` and faiss-gpu sees one); else unchanged."""
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "gpu" and gpus == 0:
        raise RuntimeError("index.device is 'gpu' but FAISS sees no GPU (is faiss-gpu installed?)")
    if device in ("gpu", "auto") and gpus > 0:
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
