"""Per-size quality metrics over rankings, as pure numpy functions.

Conventions (ImageNet protocol of the MRL paper): relevance = same label. A ranking shorter than k (the
database has fewer than k items) or padded with -1 ids counts the missing places as not relevant; the
denominators stay as defined: precision@k and mAP@k divide by k, recall@k by the number of relevant items
in the database for that query (queries with none are left out of the recall mean).
"""

from __future__ import annotations

import numpy as np


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose arg-max logit is the label. logits (N, C), labels (N,)."""
    return float((np.asarray(logits).argmax(axis=1) == np.asarray(labels)).mean())


def hits_matrix(retrieved_labels: np.ndarray, query_labels: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) bool: is the i-th retrieved item relevant. Labels of missing items are -1 (never relevant)."""
    retrieved_labels = np.asarray(retrieved_labels)
    q = retrieved_labels.shape[0]
    padded = np.full((q, k), -1, dtype=np.int64)
    width = min(k, retrieved_labels.shape[1])
    padded[:, :width] = retrieved_labels[:, :width]
    return (padded == np.asarray(query_labels)[:, None]) & (padded >= 0)


def relevant_counts(query_labels: np.ndarray, database_labels: np.ndarray) -> np.ndarray:
    """Number of database items sharing each query's label: (Q,) int."""
    database_labels = np.asarray(database_labels)
    classes, counts = np.unique(database_labels, return_counts=True)
    lookup = dict(zip(classes.tolist(), counts.tolist()))
    return np.asarray([lookup.get(int(c), 0) for c in np.asarray(query_labels)], dtype=np.int64)


def retrieval_metrics(retrieved_labels: np.ndarray, query_labels: np.ndarray, database_labels: np.ndarray,
                      k: int = 10) -> dict[str, float]:
    """1-NN accuracy, mAP@k, precision@k and recall@k of rankings.

    Args:
        retrieved_labels: (Q, K) labels of the ranked results, best first; -1 for a missing result.
        query_labels: (Q,) labels of the queries.
        database_labels: (N,) labels of the whole database (for recall's denominator).
        k: cut-off.

    Returns:
        {"nn1", f"map@{k}", f"precision@{k}", f"recall@{k}"} as fractions in [0, 1].
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    hits = hits_matrix(retrieved_labels, query_labels, k).astype(np.float64)  # (Q, k)
    ranks = np.arange(1, k + 1)
    precision_at_i = np.cumsum(hits, axis=1) / ranks  # P@i for i = 1..k
    ap = (precision_at_i * hits).sum(axis=1) / k  # the paper's mAP@k: AP divided by k
    n_rel = relevant_counts(query_labels, database_labels)
    has_rel = n_rel > 0
    recall = hits.sum(axis=1)[has_rel] / n_rel[has_rel]
    return {
        "nn1": float(hits[:, 0].mean()),
        f"map@{k}": float(ap.mean()),
        f"precision@{k}": float(hits.sum(axis=1).mean() / k),
        f"recall@{k}": float(recall.mean()) if recall.size else float("nan"),
    }


def pair_metrics(positions: np.ndarray, targets: np.ndarray, k: int = 10) -> dict[str, float]:
    """Known-item retrieval: each query has exactly one relevant database row.

    Args:
        positions: (Q, >=k) retrieved database rows, best first (-1 = none).
        targets: (Q,) the relevant row of each query.
        k: cut-off.

    Returns:
        {"r@1", "r@k", "mrr@k"} as fractions; MRR counts 1/rank of the relevant row when it is in the top k.
    """
    hits = positions[:, :k] == targets[:, None]  # (Q, k), at most one True per row
    found = hits.any(1)
    rank = hits.argmax(1)  # 0-based rank where found
    return {"r@1": float(hits[:, 0].mean()), f"r@{k}": float(found.mean()),
            f"mrr@{k}": float(np.where(found, 1.0 / (rank + 1), 0.0).mean())}
