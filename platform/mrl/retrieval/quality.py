"""Retrieval quality of one prefix size: exact search through the engine, scored by label (the MRL paper's
protocol: database = train split, queries = test split, relevance = same label)."""

from __future__ import annotations

import numpy as np

from mrl.core.metrics import pair_metrics, retrieval_metrics
from mrl.retrieval.engine import FaissSource, SearchEngine
from mrl.retrieval.indexes import build_prefix_index
from mrl.retrieval.modes import index_source
from mrl.retrieval.plan import QueryPlan, Shortlist


def exact_plan(source: str, k: int) -> QueryPlan:
    """One exact search of `source` for k results, no rerank."""
    return QueryPlan(mode="exact", shortlist=Shortlist(source=source, k=k), k=k)


def exact_engine(vectors: np.ndarray, sizes: list[int], device: str = "auto") -> SearchEngine:
    """A search engine over `vectors` with an exact (flat) FAISS index on each prefix in `sizes`, named as in an
    index artifact (`size_<m>`), so the search modes' plans run on it."""

    return SearchEngine(vectors, {index_source(m): FaissSource(build_prefix_index(vectors, m), m, "flat", device)
                                  for m in sizes})


def retrieval_at(db_vectors: np.ndarray, db_labels: np.ndarray, q_vectors: np.ndarray, q_labels: np.ndarray,
                 size: int, k: int = 10) -> dict[str, float]:
    """1-NN, mAP@k, P@k, R@k of exact cosine search on the normalised prefix `size` (a FAISS flat index, on the
    GPUs when faiss-gpu sees any)."""

    positions = exact_engine(db_vectors, [size]).run(exact_plan(index_source(size), k), q_vectors).positions
    return label_metrics(positions, q_labels, db_labels, k)


def label_metrics(positions: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray, k: int) -> dict[str, float]:
    """1-NN, mAP@k, P@k, R@k of rankings given as database positions (Q, >= k), -1 for an empty slot,
    relevance = the same label."""
    db_labels = np.asarray(db_labels)
    retrieved = np.where(positions >= 0, db_labels[np.maximum(positions, 0)], -1)
    return retrieval_metrics(retrieved, np.asarray(q_labels), db_labels, k)


def pair_retrieval_at(q_vectors: np.ndarray, d_vectors: np.ndarray, size: int, k: int = 10) -> dict[str, float]:
    """R@1, R@k and MRR@k of exact cosine search on the normalised prefix `size`, where query i's one relevant
    document is database row i (e.g. a definition and its synset's lemmas)."""

    positions = exact_engine(d_vectors, [size]).run(exact_plan(index_source(size), k), q_vectors).positions
    return pair_metrics(positions, np.arange(len(q_vectors)), k)
