"""Brute-force references and random data for the retrieval tests (plain numpy, float64, sorted by
(-score, position))."""

import numpy as np

from mrl.retrieval.topk import normalize_prefix


def brute_force(database, queries, k, size):
    """Reference: per query, cosine on the first `size` dims in float64, sorted by (-score, position)."""
    out_pos, out_scores = [], []
    for q in np.asarray(queries, dtype=np.float64):
        qp = q[:size]
        qn = np.linalg.norm(qp)
        scored = []
        for i, row in enumerate(np.asarray(database, dtype=np.float64)):
            rp = row[:size]
            rn = np.linalg.norm(rp)
            s = float(qp @ rp) / (qn * rn) if qn > 0 and rn > 0 else 0.0
            scored.append((-s, i))
        scored.sort()
        best = scored[:k]
        out_pos.append([i for _, i in best])
        out_scores.append([-s for s, _ in best])
    return np.array(out_scores), np.array(out_pos)


def random_data(seed, n=60, q=7, d=16):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((q, d)).astype(np.float32)


def data(seed=0, n=2000, q=40, d=64):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(q, d)).astype(np.float32)


def brute(db, q, size, k):
    """Reference: full sort by (-score, position) in plain numpy."""
    scores = normalize_prefix(q, size).astype(np.float64) @ normalize_prefix(db, size).astype(np.float64).T
    order = np.array([sorted(range(len(db)), key=lambda j: (-round(row[j], 6), j))[:k] for row in scores])
    return order
