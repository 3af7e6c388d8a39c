"""The rerank store and the rerank step (mrl.retrieval.store)."""

import numpy as np
import pytest

import mrl.retrieval.kernels
import mrl.retrieval.store
from mrl.retrieval.store import PrefixStore, rerank
from mrl.retrieval.topk import exact_search, normalize_prefix

from retrieval_reference import random_data


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
    """The PyTorch path (no Numba) scores cache-sized blocks and gives the kernel's results."""
    db, q = random_data(8, n=300, q=3, d=16)
    cand = np.tile(np.arange(300), (3, 1))
    cand[1, ::7] = -1
    expected = rerank(cand, db, q, size=12, k=20)
    monkeypatch.setattr(mrl.retrieval.kernels, "available", lambda: False)
    monkeypatch.setattr(mrl.retrieval.store, "RERANK_BLOCK_FLOATS", 12 * 32)  # 300 candidates: 10 pieces of 32 per query
    calls = []
    score = mrl.retrieval.store.PrefixStore.score
    monkeypatch.setattr(mrl.retrieval.store.PrefixStore, "score",
                        lambda self, pos, unit, size: calls.append(pos.shape) or score(self, pos, unit, size))
    got = rerank(cand, db, q, size=12, k=20)
    assert max(rows * width for rows, width in calls) * 12 <= 12 * 32 and len(calls) == 3 * 10
    assert np.array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], atol=1e-6)


def test_prefix_store_scores_like_exact_search_from_a_memory_map(tmp_path):
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
    rng = np.random.default_rng(6)
    db = rng.normal(size=(200, 16)).astype(np.float32)
    q = rng.normal(size=(3, 16)).astype(np.float32)
    half = PrefixStore(db.astype(np.float16))
    cand = np.tile(np.arange(200), (3, 1))
    ref = normalize_prefix(q, 16) @ normalize_prefix(db, 16).T
    np.testing.assert_allclose(half.score(cand, normalize_prefix(q, 16), 16), ref, atol=2e-3)
    assert PrefixStore(db.astype(np.float64)).vectors.dtype == np.float32  # other dtypes are widened once


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_device_resident_rerank_gives_the_cpu_paths_results(dtype):
    """PrefixStore.rerank (the accelerator path: one copy in, blocks scored and ranked on the device, one copy out)
    run here on the CPU, block sizes forcing several blocks, against the CPU path: same ids, same scores,
    ties and empty slots included."""
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(500, 64)).astype(dtype)
    vectors[7] = vectors[9]  # an exact tie: the lower position wins on both paths
    vectors[11] = 0  # a zero row scores 0
    queries = rng.normal(size=(40, 64)).astype(np.float32)
    candidates = rng.integers(0, 500, size=(40, 30))
    candidates[:, :3] = [7, 9, 11]
    candidates[5, 10:] = -1  # empty slots
    store = PrefixStore(vectors)
    for size, k in ((16, 10), (64, 30), (64, 45)):
        want_s, want_p = rerank(candidates, store, queries, size, k)
        got_s, got_p = store.rerank(candidates, queries, size, k, block_floats=size * 30 * 7)
        assert np.array_equal(got_p, want_p)
        np.testing.assert_allclose(got_s, want_s, rtol=1e-6, atol=1e-7)


def test_the_kernel_widens_every_float16_exactly():
    bits = np.arange(1 << 16, dtype=np.uint16)
    half = bits.view(np.float16)
    got, want = mrl.retrieval.kernels.widen(half), half.astype(np.float32)
    finite = np.isfinite(want)
    assert np.array_equal(got[finite], want[finite])  # normals, subnormals and both zeros, bit for bit
    assert np.array_equal(np.signbit(got[finite]), np.signbit(want[finite]))
    assert np.array_equal(got[np.isinf(want)], want[np.isinf(want)]) and np.isnan(got[np.isnan(want)]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_fused_kernel_scores_like_the_torch_path(dtype):
    """Cosines of the kernel (four rows at a time, a scalar tail, empty slots breaking a group of four) against
    the PyTorch gather-and-score path."""
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(400, 48)).astype(dtype)
    vectors[5] = 0  # a zero row scores 0
    vectors[6, :8] = 0  # zero at a small prefix only
    queries = rng.normal(size=(9, 48)).astype(np.float32)
    candidates = rng.integers(0, 400, size=(9, 23))  # 23 = 5 groups of four and a tail of three
    candidates[:, :2] = [5, 6]
    candidates[2, 5] = -1
    candidates[4, ::3] = -1
    store = PrefixStore(vectors)
    for size in (8, 33, 48):
        unit = normalize_prefix(queries, size)
        got = mrl.retrieval.kernels.prefix_cosines(vectors, candidates, unit, size)
        want = store.score(np.where(candidates >= 0, candidates, 0), unit, size)
        filled = candidates >= 0
        np.testing.assert_allclose(got[filled], want[filled], rtol=1e-5, atol=1e-6)
        assert np.all(got[~filled] == 0) and np.all(got[:, 0] == 0)
        assert (got[:, 1] == 0).all() == (size == 8)


def test_the_device_rerank_normalises_odd_queries_like_the_host():
    """Queries with a zero or overflowing prefix take the host's float64 normalisation on the device path too."""
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(6, 16)).astype(np.float32)
    queries[1, :8] = 0  # zero at prefix 8 only
    queries[2] *= 1e20  # float32 norm overflows
    candidates = rng.integers(0, 300, size=(6, 40))
    store = PrefixStore(vectors)
    for size in (8, 16):
        want_s, want_p = rerank(candidates, store, queries, size, 10)
        got_s, got_p = store.rerank(candidates, queries, size, 10)
        assert np.array_equal(got_p, want_p)
        np.testing.assert_allclose(got_s, want_s, rtol=1e-6, atol=1e-7)
    assert np.all(store.rerank(candidates, queries, 8, 10)[0][1] == 0)  # a zero query prefix scores 0


def test_vectors_saved_page_aligned_load_as_any_npy_and_start_on_a_page(tmp_path):
    from mrl.retrieval.store import PAGE_BYTES, PrefixStore, save_page_aligned

    rows = np.random.default_rng(12).normal(size=(300, 2048)).astype(np.float32)
    save_page_aligned(tmp_path / "v.npy", rows, np.float16)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    assert mapped.offset == PAGE_BYTES and mapped.dtype == np.float16 and mapped.shape == (300, 2048)
    assert np.array_equal(mapped, rows.astype(np.float16)) and np.array_equal(np.load(tmp_path / "v.npy"), mapped)
    assert (tmp_path / "v.npy").stat().st_size == PAGE_BYTES + rows.size * 2  # each 4,096-byte row on one page
    assert PrefixStore(mapped).mapped  # advised random access; reads as before
