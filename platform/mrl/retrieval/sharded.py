"""Sharded search: several index shards searched separately, their top-k merged exactly (library only: the
index stage writes one index per size and the service searches it whole)."""

from __future__ import annotations

import numpy as np

from mrl.retrieval.indexes import faiss_search
from mrl.retrieval.topk import merge_topk


def sharded_search(shards: list[tuple[object, np.ndarray]], queries: np.ndarray, size: int, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Search every shard's FAISS index (built on prefix `size`) and merge their top-k exactly.

    Args:
        shards: (index, ids) pairs; ids (N_i,) map the shard's positions to global ids.

    Returns:
        (scores (Q, k'), global ids (Q, k')), ties by lower id, -1 for empty slots.
    """
    parts = []
    for index, ids in shards:
        scores, positions = faiss_search(index, queries, size, k)
        parts.append((scores, np.where(positions >= 0, np.asarray(ids)[np.maximum(positions, 0)], -1)))
    return merge_topk(parts, k)
