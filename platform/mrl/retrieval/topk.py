"""Top-k selection and the exact (brute-force) reference search over L2-normalised prefixes.

Scores are inner products of separately L2-normalised prefixes (cosine similarity at that size).
Ties are broken by the lower database position (or id), everywhere.
"""

from __future__ import annotations

import numpy as np


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
