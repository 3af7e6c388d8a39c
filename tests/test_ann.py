"""Funnel, sharded merge, AdANNS-style IVF and the approximate index kinds against brute-force numpy."""

import numpy as np
import pytest

from mrl.ann import AdannsIVF, sharded_search
from mrl.search import (build_prefix_index, exact_search, faiss_search, funnel_search, merge_topk,
                        normalize_prefix, rerank)


def data(seed=0, n=2000, q=40, d=64):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(q, d)).astype(np.float32)


def brute(db, q, size, k):
    """Reference: full sort by (-score, position) in plain numpy."""
    scores = normalize_prefix(q, size).astype(np.float64) @ normalize_prefix(db, size).astype(np.float64).T
    order = np.array([sorted(range(len(db)), key=lambda j: (-round(row[j], 6), j))[:k] for row in scores])
    return order


def test_merge_topk_is_exact_with_ties_by_id_and_empty_slots():
    a = (np.array([[0.9, 0.5, 0.1]]), np.array([[7, 3, 1]]))
    b = (np.array([[0.5, 0.4, 0.0]]), np.array([[2, 9, -1]]))  # 0.5 ties with id 3: id 2 first
    scores, ids = merge_topk([a, b], 4)
    assert ids.tolist() == [[7, 2, 3, 9]]
    np.testing.assert_allclose(scores, [[0.9, 0.5, 0.5, 0.4]])
    _, ids = merge_topk([b], 3)
    assert ids.tolist() == [[2, 9, -1]]


def test_sharded_search_equals_one_exact_index_including_duplicate_ties():
    db, q = data(1, n=900)
    db[600:650] = db[0:50]  # exact duplicates in another shard: ties must come out by lower id
    q[:5] = db[:5]
    shards = [(build_prefix_index(db[i:i + 300], 32), np.arange(i, i + 300)) for i in range(0, 900, 300)]
    _, ids = sharded_search(shards, q, 32, 10)
    assert ids.tolist() == brute(db, q, 32, 10).tolist()
    assert ids[0, 0] == 0 and ids[0, 1] == 600  # the query itself and its duplicate


@pytest.mark.parametrize("k_first", [2000, 300])
def test_funnel_matches_chained_reranks_and_exact_when_nothing_is_cut(k_first):
    db, q = data(2)
    stages = [(8, k_first), (16, 100), (32, 50), (64, 10)]
    index = build_prefix_index(db, 8)
    scores, pos = funnel_search(index, db, q, stages)
    _, cand = faiss_search(index, q, 8, k_first)
    for size, keep in stages[1:]:
        ref_scores, cand = rerank(cand, db, q, size, keep)
    assert pos.tolist() == cand.tolist()
    np.testing.assert_allclose(scores, ref_scores)
    with pytest.raises(ValueError, match="sizes must increase"):
        funnel_search(index, db, q, [(16, 100), (8, 50)])
    with pytest.raises(ValueError, match="shortlists must not grow"):
        funnel_search(index, db, q, [(8, 50), (16, 100)])


def test_funnel_single_wide_stage_then_full_rerank_is_exact():
    db, q = data(3)
    index = build_prefix_index(db, 8)
    _, pos = funnel_search(index, db, q, [(8, len(db)), (64, 10)])
    assert pos.tolist() == brute(db, q, 64, 10).tolist()


def test_adanns_candidates_cover_probed_cells_and_full_probe_is_exact():
    db, q = data(4, n=1500)
    ivf = AdannsIVF.build(db, cluster_size=8, nlist=20)
    assert ivf.offsets[-1] == len(db) and sorted(ivf.members.tolist()) == list(range(len(db)))
    cand = ivf.candidates(q, nprobe=ivf.nlist)
    assert all(sorted(r[r >= 0].tolist()) == list(range(len(db))) for r in cand)
    cand2 = ivf.candidates(q[:3], nprobe=2)
    sims = normalize_prefix(q[:3], 8) @ ivf.centroids.T
    for row, s in zip(cand2, sims):
        cells = np.argsort(-s)[:2]
        expected = np.concatenate([ivf.members[ivf.offsets[c]:ivf.offsets[c + 1]] for c in cells])
        assert sorted(row[row >= 0].tolist()) == sorted(expected.tolist())
    _, pos = ivf.search(db, q, nprobe=ivf.nlist, search_size=64, k=10)
    assert pos.tolist() == brute(db, q, 64, 10).tolist()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_are_exact_or_close_when_searching_widely(kind):
    db, q = data(5)
    index = build_prefix_index(db, 32, kind, nlist=16, nprobe=16, ef_search=512)
    _, pos = faiss_search(index, q, 32, 10)
    _, exact = exact_search(db, q, 10, 32)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, exact)])
    assert recall == 1.0 if kind == "ivf" else recall > 0.95


def test_ivfpq_builds_and_rejects_a_pq_size_not_dividing_the_prefix():
    db, q = data(6, n=12000, d=32)
    index = build_prefix_index(db, 32, "ivfpq", nlist=16, nprobe=16, pq_m=8)
    _, pos = faiss_search(index, q, 32, 10)
    assert pos.shape == (40, 10) and (pos >= 0).all()
    with pytest.raises(ValueError, match="pq_m dividing the prefix size: 16 does not divide 24"):
        build_prefix_index(db, 24, "ivfpq", pq_m=16)
