"""Exact and adaptive search over normalised prefixes (mrl.search)."""

import numpy as np
import pytest

from mrl.search import adaptive_search, build_prefix_index, exact_search, faiss_search, normalize_prefix, rerank, top_k

faiss = pytest.importorskip("faiss")


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


# ---------------------------------------------------------------- normalize_prefix

def test_normalize_prefix():
    x = np.array([[3.0, 4.0, 7.0], [0.0, 0.0, 5.0], [-2.0, 0.0, 1.0]])
    out = normalize_prefix(x, 2)
    assert out.dtype == np.float32 and out.shape == (3, 2)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], atol=1e-7)
    assert np.all(np.isfinite(out))
    assert out.flags["C_CONTIGUOUS"]


def test_normalize_prefix_zero_rows_stay_zero():
    out = normalize_prefix(np.zeros((2, 4)), 4)
    assert np.array_equal(out, np.zeros((2, 4), dtype=np.float32))


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_normalize_prefix_survives_float32_overflow_and_underflow(scale):
    x = np.array([[3.0, 4.0, 1.0], [1.0, 0.0, 0.0]]) * scale  # squares overflow / underflow in float32
    out = normalize_prefix(x, 2)
    np.testing.assert_allclose(out, [[0.6, 0.8], [1.0, 0.0]], atol=1e-7)
    x32 = np.array([[3.0, 4.0, 0.0, 0.0]], dtype=np.float32) * np.float32(scale)  # one contiguous row
    before = x32.copy()
    for m in (2, 4):  # a prefix of a single float32 row is a view, not a copy: it must stay untouched
        np.testing.assert_allclose(normalize_prefix(x32, m)[0, :2], [0.6, 0.8], atol=1e-7)
    assert np.array_equal(x32, before)


def test_normalize_prefix_does_not_modify_input():
    x = np.array([[3.0, 4.0]], dtype=np.float32)
    normalize_prefix(x, 2)
    assert x.tolist() == [[3.0, 4.0]]


# ---------------------------------------------------------------- top_k

def test_top_k_descending_with_ties_by_lower_column():
    scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1],
                       [1.0, 1.0, 1.0, 1.0, 1.0]])
    s, cols = top_k(scores, 3)
    assert cols.tolist() == [[1, 3, 0], [0, 1, 2]]
    assert s.tolist() == [[0.9, 0.9, 0.5], [1.0, 1.0, 1.0]]


def test_top_k_matches_a_full_lexicographic_sort_with_ties_and_empty_slots():
    rng = np.random.default_rng(3)
    for _ in range(300):
        q, n, k = rng.integers(1, 5), rng.integers(1, 40), rng.integers(1, 50)
        scores = np.round(rng.normal(size=(q, n)), 1).astype(np.float32)  # many ties, -0.0 and 0.0 among them
        scores[rng.random((q, n)) < 0.2] = -np.inf
        ids = np.stack([rng.permutation(60)[:n] for _ in range(q)])
        ids[rng.random((q, n)) < 0.1] = np.iinfo(np.int64).max  # the "empty slot" marker
        for tie in (None, ids):
            key = np.broadcast_to(np.arange(n), scores.shape) if tie is None else tie
            ref = np.lexsort((key, -scores), axis=1)[:, :k]
            s, cols = top_k(scores, k, ids=tie)
            assert np.array_equal(np.take_along_axis(key, cols, 1), np.take_along_axis(key, ref, 1))
            assert np.array_equal(s, np.take_along_axis(scores, ref, 1))


def test_top_k_with_ids_beyond_32_bits_falls_back_exactly():
    scores = np.array([[0.5, 0.5, 0.7]], dtype=np.float32)
    _, cols = top_k(scores, 3, ids=np.array([[2**40 + 1, 2**40, 5]]))
    assert cols.tolist() == [[2, 1, 0]]


def test_top_k_clips_k_to_n():
    s, cols = top_k(np.array([[0.2, 0.3]]), 5)
    assert cols.tolist() == [[1, 0]] and s.shape == (1, 2)


def test_top_k_ties_by_ids():
    scores = np.array([[0.5, 0.5, 0.5]])
    ids = np.array([[9, 2, 4]])
    _, cols = top_k(scores, 3, ids=ids)
    assert cols.tolist() == [[1, 2, 0]]


# ---------------------------------------------------------------- exact_search

@pytest.mark.parametrize("size", [4, 9, 16, None])
def test_exact_search_matches_brute_force(size):
    db, q = random_data(0)
    k = 10
    scores, pos = exact_search(db, q, k, size=size)
    ref_scores, ref_pos = brute_force(db, q, k, size or db.shape[1])
    assert pos.shape == (len(q), k)
    assert np.array_equal(pos, ref_pos)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def _exact_vectors(rng, n, d=16):
    """Vectors whose cosine products are exact in float32: entries in {-1, 0, 1} with 1, 4 or 16 non-zeros
    (norms 1, 2, 4), so every score is a multiple of 1/16 and equal scores are bit-identical."""
    out = np.zeros((n, d), dtype=np.float32)
    for row in out:
        nnz = rng.choice([1, 4, 16])
        idx = rng.choice(d, size=nnz, replace=False)
        row[idx] = rng.choice([-1.0, 1.0], size=nnz)
    return out


def test_exact_search_tie_order_by_id_with_duplicated_rows():
    rng = np.random.default_rng(1)
    base = _exact_vectors(rng, 12)
    # duplicate rows at scattered positions, plus scaled copies (same cosine)
    db = np.concatenate([base, base[::-1], 2 * base[:5], base[3:4]])
    rng.shuffle(db)
    q = _exact_vectors(rng, 6)
    k = len(db)
    scores, pos = exact_search(db, q, k)
    ref_scores, ref_pos = brute_force(db, q, k, 16)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-6)
    assert np.array_equal(pos, ref_pos)
    # and explicitly: within every run of equal scores, positions increase
    for row_s, row_p in zip(scores, pos):
        for a in range(len(row_s) - 1):
            if row_s[a] == row_s[a + 1]:
                assert row_p[a] < row_p[a + 1]
    assert (np.diff(scores, axis=1) <= 0).all()


def test_exact_search_identical_rows_rank_by_position():
    db = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    scores, pos = exact_search(db, np.array([[5.0, 0.0]], dtype=np.float32), k=5)
    assert pos.tolist() == [[1, 2, 3, 0, 4]]
    assert scores.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]


# ---------------------------------------------------------------- FAISS

@pytest.mark.parametrize("size", [4, 8, 16])
def test_faiss_flat_matches_exact_search_at_prefix(size):
    db, q = random_data(2, n=80, q=9, d=16)
    index = build_prefix_index(db, size)
    assert index.ntotal == 80 and index.d == size
    scores, pos = faiss_search(index, q, size, 7)
    ex_scores, ex_pos = exact_search(db, q, 7, size=size)
    assert np.array_equal(pos, ex_pos)
    np.testing.assert_allclose(scores, ex_scores, atol=1e-5)


def test_faiss_search_clips_k_to_database_size():
    db, q = random_data(3, n=5, q=2, d=8)
    scores, pos = faiss_search(build_prefix_index(db, 8), q, 8, 50)
    assert pos.shape == (2, 5)
    assert sorted(pos[0].tolist()) == [0, 1, 2, 3, 4]


def test_build_prefix_index_rejects_unknown_kind():
    db, _ = random_data(4, n=4, q=1, d=4)
    with pytest.raises(ValueError, match=r"index kind 'annoy' is not accepted"):
        build_prefix_index(db, 4, kind="annoy")


# ---------------------------------------------------------------- rerank

def test_rerank_with_empty_slots():
    db = np.array([[1.0, 0.0, 9.0],      # 0: cos with q = 1
                   [0.6, 0.8, -9.0],     # 1: 0.6
                   [0.0, 1.0, 0.0],      # 2: 0
                   [-1.0, 0.0, 0.0],     # 3: -1
                   [0.8, 0.6, 0.0]],     # 4: 0.8
                  dtype=np.float32)
    q = np.array([[2.0, 0.0, 100.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    candidates = np.array([[3, -1, 1, -1, 4],
                           [-1, -1, 2, -1, -1]])
    scores, pos = rerank(candidates, db, q, size=2, k=4)
    assert pos.tolist() == [[4, 1, 3, -1], [2, -1, -1, -1]]
    np.testing.assert_allclose(scores[0, :3], [0.8, 0.6, -1.0], atol=1e-6)
    assert scores[0, 3] == -np.inf
    assert scores[1, 0] == pytest.approx(1.0)
    assert np.all(scores[1, 1:] == -np.inf)
    assert scores.dtype == np.float32


def test_rerank_all_slots_empty():
    db = np.eye(3, dtype=np.float32)
    scores, pos = rerank(np.full((1, 3), -1), db, np.ones((1, 3), dtype=np.float32), size=3, k=2)
    assert pos.tolist() == [[-1, -1]]
    assert np.all(scores == -np.inf)


def test_rerank_ties_by_lower_database_position():
    db = np.array([[1.0, 0.0]] * 6, dtype=np.float32)
    scores, pos = rerank(np.array([[5, 2, -1, 4, 0]]), db, np.array([[1.0, 0.0]], dtype=np.float32), 2, 5)
    assert pos.tolist() == [[0, 2, 4, 5, -1]]


def test_rerank_reads_rerank_size_prefix():
    db, q = random_data(5, n=30, q=4, d=16)
    cand = np.tile(np.arange(30), (4, 1))
    scores, pos = rerank(cand, db, q, size=6, k=5)
    ex_scores, ex_pos = exact_search(db, q, 5, size=6)
    assert np.array_equal(pos, ex_pos)
    np.testing.assert_allclose(scores, ex_scores, atol=1e-5)


def test_rerank_splits_a_shortlist_longer_than_one_block(monkeypatch):
    import mrl.search

    db, q = random_data(8, n=300, q=3, d=16)
    cand = np.tile(np.arange(300), (3, 1))
    cand[1, ::7] = -1
    expected = rerank(cand, db, q, size=12, k=20)
    monkeypatch.setattr(mrl.search, "RERANK_BLOCK_FLOATS", 12 * 32)  # 300 candidates: 10 pieces of 32 per query
    calls = []
    score = mrl.search.PrefixStore.score
    monkeypatch.setattr(mrl.search.PrefixStore, "score",
                        lambda self, pos, unit, size: calls.append(pos.shape) or score(self, pos, unit, size))
    got = rerank(cand, db, q, size=12, k=20)
    assert max(rows * width for rows, width in calls) * 12 <= 12 * 32 and len(calls) == 3 * 10
    assert np.array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], atol=1e-6)


# ---------------------------------------------------------------- adaptive search

@pytest.mark.parametrize("shortlist_size, rerank_size", [(4, 16), (2, 8), (16, 16)])
def test_adaptive_search_with_full_shortlist_equals_exact_search(shortlist_size, rerank_size):
    db, q = random_data(6, n=50, q=8, d=16)
    index = build_prefix_index(db, shortlist_size)
    scores, pos = adaptive_search(index, db, q, shortlist_size, shortlist_k=50, rerank_size=rerank_size, k=10)
    ex_scores, ex_pos = exact_search(db, q, 10, size=rerank_size)
    assert np.array_equal(pos, ex_pos)
    np.testing.assert_allclose(scores, ex_scores, atol=1e-5)


def test_adaptive_search_results_come_from_the_shortlist():
    db, q = random_data(7, n=50, q=5, d=16)
    index = build_prefix_index(db, 4)
    _, short = faiss_search(index, q, 4, 6)
    _, pos = adaptive_search(index, db, q, 4, shortlist_k=6, rerank_size=16, k=3)
    assert pos.shape == (5, 3)
    for row, allowed in zip(pos, short):
        assert set(row.tolist()) <= set(allowed.tolist())


# ---------------------------------------------------------------- prefix store, funnel stages

def test_prefix_store_scores_like_exact_search_from_a_memory_map(tmp_path):
    from mrl.search import PrefixStore

    rng = np.random.default_rng(5)
    db = rng.normal(size=(300, 32)).astype(np.float32)
    db[7] = 0.0  # a zero row scores 0, never NaN
    q = rng.normal(size=(4, 32)).astype(np.float32)
    np.save(tmp_path / "v.npy", db)
    mapped = PrefixStore(np.load(tmp_path / "v.npy", mmap_mode="r"))
    assert isinstance(mapped.vectors, np.memmap) and len(mapped) == 300 and mapped.dim == 32
    cand = np.tile(np.arange(300), (4, 1))
    for size in (8, 16, 32):
        ref = normalize_prefix(q, size) @ normalize_prefix(db, size).T
        for store in (mapped, PrefixStore(db)):
            got = store.score(cand, normalize_prefix(q, size), size)
            np.testing.assert_allclose(got, ref, atol=1e-5)
            assert np.all(got[:, 7] == 0)
        _, p = rerank(cand, mapped, q, size, 10)
        _, ep = exact_search(db, q, 10, size=size)
        assert np.array_equal(p, ep)


def test_prefix_store_float16_is_close_to_float32():
    from mrl.search import PrefixStore

    rng = np.random.default_rng(6)
    db = rng.normal(size=(200, 16)).astype(np.float32)
    q = rng.normal(size=(3, 16)).astype(np.float32)
    half = PrefixStore(db.astype(np.float16))
    cand = np.tile(np.arange(200), (3, 1))
    ref = normalize_prefix(q, 16) @ normalize_prefix(db, 16).T
    np.testing.assert_allclose(half.score(cand, normalize_prefix(q, 16), 16), ref, atol=2e-3)
    assert PrefixStore(db.astype(np.float64)).vectors.dtype == np.float32  # other dtypes are widened once


def test_default_funnel_doubles_sizes_and_halves_keeps():
    from mrl.search import default_funnel

    assert default_funnel(16, 200, 2048, 10) == [(32, 100), (64, 50), (128, 25), (256, 12), (512, 10),
                                                 (1024, 10), (2048, 10)]
    assert default_funnel(16, 200, 64, 5) == [(32, 100), (64, 5)]
    assert default_funnel(16, 40, 16, 5) == [(16, 5)]


def test_rerank_stages_equals_chained_reranks():
    from mrl.search import rerank_stages

    rng = np.random.default_rng(7)
    db = rng.normal(size=(400, 32)).astype(np.float32)
    q = rng.normal(size=(6, 32)).astype(np.float32)
    cand = np.tile(np.arange(400), (6, 1))
    s, p = rerank_stages(cand, db, q, [(8, 100), (32, 10)])
    _, c1 = rerank(cand, db, q, 8, 100)
    s2, p2 = rerank(c1, db, q, 32, 10)
    assert np.array_equal(p, p2) and np.array_equal(s, s2)
    with pytest.raises(ValueError, match="at least one"):
        rerank_stages(cand, db, q, [])


def test_top_k_unsorted_keeps_the_same_entries():
    rng = np.random.default_rng(8)
    scores = np.round(rng.normal(size=(50, 40)), 1).astype(np.float32)  # ties at the cut
    (s_sorted, c_sorted), (s_any, c_any) = top_k(scores, 13), top_k(scores, 13, sort=False)
    assert [set(a) for a in c_sorted.tolist()] == [set(b) for b in c_any.tolist()]
    assert np.array_equal(np.sort(s_sorted, axis=1), np.sort(s_any, axis=1))
