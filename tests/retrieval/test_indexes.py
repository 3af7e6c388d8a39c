"""FAISS prefix indexes of every registered kind against the exact reference (mrl.retrieval.indexes)."""

import numpy as np
import pytest

from mrl.retrieval.indexes import INDEX_KINDS, IndexParams, build_prefix_index, faiss_search
from mrl.retrieval.topk import exact_search

from retrieval_reference import data, random_data


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


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_are_exact_or_close_when_searching_widely(kind):
    db, q = data(5)
    index = build_prefix_index(db, 32, kind, IndexParams(nlist=16, nprobe=16, ef_search=512))
    _, pos = faiss_search(index, q, 32, 10)
    _, exact = exact_search(db, q, 10, 32)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, exact)])
    assert recall == 1.0 if kind == "ivf" else recall > 0.95


def test_ivfpq_builds_and_rejects_a_pq_size_not_dividing_the_prefix():
    db, q = data(6, n=12000, d=32)
    index = build_prefix_index(db, 32, "ivfpq", IndexParams(nlist=16, nprobe=16, pq_m=8))
    _, pos = faiss_search(index, q, 32, 10)
    assert pos.shape == (40, 10) and (pos >= 0).all()
    with pytest.raises(ValueError, match="pq_m dividing the prefix size: pq_m=16 does not divide 24"):
        build_prefix_index(db, 24, "ivfpq", IndexParams(pq_m=16))


def test_every_registered_kind_builds_and_answers():
    db, q = data(7, n=3000, d=16)
    for kind in INDEX_KINDS:
        index = build_prefix_index(db, 16, kind, IndexParams(nlist=8, nprobe=8, pq_m=4))
        _, pos = faiss_search(index, q, 16, 5)
        assert pos.shape == (len(q), 5) and (pos >= 0).all(), kind
    with pytest.raises(ValueError, match=r"index size 32 is outside \[1, d=16\]"):
        build_prefix_index(db, 32, "flat")


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_float16_storage_halves_the_vectors_and_finds_the_same_neighbours(kind):
    import faiss

    from mrl.retrieval.indexes import index_bytes

    rng = np.random.default_rng(8)
    db = rng.normal(size=(3000, 32)).astype(np.float32)
    q = rng.normal(size=(20, 32)).astype(np.float32)
    built = {st: build_prefix_index(db, 32, kind, IndexParams(storage=st, nlist=16, nprobe=16)) for st in
             ("float32", "float16")}
    half, full = built["float16"], built["float32"]
    assert isinstance(faiss.downcast_index(half), faiss.IndexHNSWSQ if kind == "hnsw" else faiss.IndexIVFScalarQuantizer)
    vectors = 3000 * 32 * 4
    assert index_bytes(full) - index_bytes(half) == vectors // 2  # everything else (links, ids) is the same
    _, exact = exact_search(db, q, 10, 32)
    for index in (half, full):
        _, found = faiss_search(index, q, 32, 10, ef_search=200)
        assert np.mean([np.isin(e, f).mean() for e, f in zip(exact, found)]) > 0.95
    with pytest.raises(ValueError, match="storage 'bfloat16' is not accepted"):
        build_prefix_index(db, 32, kind, IndexParams(storage="bfloat16"))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
@pytest.mark.parametrize("storage, share, recall", [("int8", 4, 0.9), ("int4", 8, 0.6)])
def test_scalar_quantised_storage_shrinks_the_vectors_and_still_finds_neighbours(kind, storage, share, recall):
    from mrl.retrieval.indexes import index_bytes

    rng = np.random.default_rng(9)
    db, q = rng.normal(size=(3000, 32)).astype(np.float32), rng.normal(size=(20, 32)).astype(np.float32)
    full = build_prefix_index(db, 32, kind, IndexParams(nlist=16, nprobe=16))
    small = build_prefix_index(db, 32, kind, IndexParams(storage=storage, nlist=16, nprobe=16))
    vectors = 3000 * 32 * 4
    assert index_bytes(full) - index_bytes(small) == vectors - vectors // share  # 1 byte or half a byte a value
    _, exact = exact_search(db, q, 10, 32)
    _, found = faiss_search(small, q, 32, 10, ef_search=200)
    assert np.mean([np.isin(e, f).mean() for e, f in zip(exact, found)]) > recall
