"""Prefix normalisation, top-k selection, the exact reference search and the shard merge
(mrl.retrieval.topk)."""

import numpy as np
import pytest

from mrl.retrieval.topk import exact_search, merge_topk, normalize_prefix, top_k

from retrieval_reference import brute_force, random_data


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


def test_top_k_unsorted_keeps_the_same_entries():
    rng = np.random.default_rng(8)
    scores = np.round(rng.normal(size=(50, 40)), 1).astype(np.float32)  # ties at the cut
    (s_sorted, c_sorted), (s_any, c_any) = top_k(scores, 13), top_k(scores, 13, sort=False)
    assert [set(a) for a in c_sorted.tolist()] == [set(b) for b in c_any.tolist()]
    assert np.array_equal(np.sort(s_sorted, axis=1), np.sort(s_any, axis=1))


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


def test_merge_topk_is_exact_with_ties_by_id_and_empty_slots():
    a = (np.array([[0.9, 0.5, 0.1]]), np.array([[7, 3, 1]]))
    b = (np.array([[0.5, 0.4, 0.0]]), np.array([[2, 9, -1]]))  # 0.5 ties with id 3: id 2 first
    scores, ids = merge_topk([a, b], 4)
    assert ids.tolist() == [[7, 2, 3, 9]]
    np.testing.assert_allclose(scores, [[0.9, 0.5, 0.5, 0.4]])
    _, ids = merge_topk([b], 3)
    assert ids.tolist() == [[2, 9, -1]]
