"""Retrieval quality of one prefix size: exact search through the engine, scored by label (the MRL paper's
protocol: database = train split, queries = test split, relevance = same label)."""

from __future__ import annotations

import numpy as np

from mrl.core.metrics import retrieval_metrics
from mrl.retrieval.engine import FaissSource, SearchEngine
from mrl.retrieval.plan import QueryPlan, Shortlist


def exact_plan(source: str, k: int) -> QueryPlan:
    """One exact search of `source` for k results, no rerank."""
    return QueryPlan(mode="exact", shortlist=Shortlist(source=source, k=k), k=k)


def retrieval_at(db_vectors: np.ndarray, db_labels: np.ndarray, q_vectors: np.ndarray, q_labels: np.ndarray,
                 size: int, k: int = 10) -> dict[str, float]:
    """1-NN, mAP@k, P@k, R@k of exact cosine search on the normalised prefix `size` (a FAISS flat index, on the
    GPUs when faiss-gpu sees any)."""
    from mrl.retrieval.indexes import build_prefix_index

    engine = SearchEngine(db_vectors, {"flat": FaissSource(build_prefix_index(db_vectors, size), size, "flat", "auto")})
    positions = engine.run(exact_plan("flat", k), q_vectors).positions
    retrieved = np.where(positions >= 0, db_labels[np.maximum(positions, 0)], -1)
    return retrieval_metrics(retrieved, q_labels, db_labels, k)


def pair_retrieval_at(q_vectors: np.ndarray, d_vectors: np.ndarray, size: int, k: int = 10) -> dict[str, float]:
    """R@1, R@k and MRR@k of exact cosine search on the normalised prefix `size`, where query i's one relevant
    document is database row i (e.g. a definition and its synset's lemmas)."""
    from mrl.core.metrics import pair_metrics
    from mrl.retrieval.indexes import build_prefix_index

    engine = SearchEngine(d_vectors, {"flat": FaissSource(build_prefix_index(d_vectors, size), size, "flat", "auto")})
    positions = engine.run(exact_plan("flat", k), q_vectors).positions
    return pair_metrics(positions, np.arange(len(q_vectors)), k)
