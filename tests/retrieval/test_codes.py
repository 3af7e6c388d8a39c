"""Compact codes (mrl.retrieval.codes), the binary index kinds, code rerank stages in plans, memory-mapped full
vectors and the resident-memory accounting, against brute-force references."""

import numpy as np
import pytest

from mrl.retrieval import codes as codes_module
from mrl.retrieval.codes import CodeStore, binary_codes
from mrl.retrieval.engine import FaissSource, SearchEngine
from mrl.retrieval.indexes import IndexParams, build_prefix_index, faiss_search, index_bytes
from mrl.retrieval.plan import PlanError, QueryPlan, Rerank, Shortlist, check_stages
from mrl.retrieval.store import PrefixStore, rerank
from mrl.retrieval.topk import normalize_prefix

from retrieval_reference import random_data


def brute_hamming(db, queries, size):
    """(Q, N) Hamming distances between the sign bits of the prefixes, from unpacked booleans."""
    a, b = np.asarray(queries)[:, :size] > 0, np.asarray(db)[:, :size] > 0
    return (a[:, None, :] != b[None, :, :]).sum(-1)


def ranked(scores, k):
    """Best k per row by (-score, position): the tie rule every stage follows."""
    return np.array([sorted(range(len(row)), key=lambda i: (-row[i], i))[:k] for row in scores])


def tied_data(seed, n=300, q=6, d=64):
    """Random rows where every row is repeated three times (ties at every distance) and one row is all zero."""
    db, queries = random_data(seed, n=n // 3, q=q, d=d)
    db = np.repeat(db, 3, axis=0)
    db[5] = 0
    return db, queries


@pytest.mark.parametrize("size", [16, 64])
def test_binary_stage_is_brute_force_hamming_with_ties_by_lower_position(size):
    db, queries = tied_data(1)
    store = CodeStore.build(db, "binary", size)
    assert store.codes.shape == (len(db), size // 8) and store.nbytes == len(db) * size // 8
    candidates = np.tile(np.arange(len(db)), (len(queries), 1))
    candidates[:, 7] = -1
    scores, positions = store.rerank(candidates, queries, 20)
    reference = -brute_hamming(db, queries, size).astype(float)
    reference[:, 7] = -np.inf
    expected = ranked(reference, 20)
    assert np.array_equal(positions, expected)
    assert np.array_equal(scores, np.take_along_axis(reference, expected, 1))


def test_int8_stage_is_the_dequantised_dot_product_ranked_with_ties_by_lower_position():
    db, queries = tied_data(2)
    store = CodeStore.build(db, "int8", 32)
    assert store.codes.dtype == np.int8 and store.nbytes == len(db) * 32 + 4 * 32
    dequantised = store.codes.astype(np.float64) * store.scale
    reference = normalize_prefix(queries, 32).astype(np.float64) @ dequantised.T
    candidates = np.tile(np.arange(len(db)), (len(queries), 1))
    scores, positions = store.rerank(candidates, queries, 15)
    expected = ranked(np.round(reference, 5), 15)  # float32 sums: compare the order up to rounding
    assert np.array_equal(positions, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(reference, expected, 1), atol=1e-4)
    # the codes are the unit prefix up to half a step per dimension (inside the clipped range)
    unit = normalize_prefix(db, 32)
    inside = np.abs(unit) <= 127 * store.scale
    half_step = np.broadcast_to(store.scale / 2, unit.shape)
    assert (np.abs(unit - dequantised)[inside] <= half_step[inside] + 1e-6).all()


@pytest.mark.parametrize("kind", ["binary", "int8"])
def test_the_compiled_kernels_score_like_the_numpy_path(kind, monkeypatch):
    db, queries = random_data(3, n=500, q=9, d=128)
    store = CodeStore.build(db, kind, 128 if kind == "binary" else 96)
    candidates = np.random.default_rng(3).integers(-1, len(db), size=(len(queries), 70))
    compiled = store.scores(candidates, queries)
    monkeypatch.setattr(codes_module.kernels, "available", lambda: False)
    np.testing.assert_allclose(store.scores(candidates, queries), compiled, rtol=1e-5, atol=1e-5)


def test_binary_codes_of_odd_widths_are_compared_byte_by_byte():
    db, queries = random_data(4, n=90, q=3, d=24)
    store = CodeStore.build(db, "binary", 24)  # 3 bytes a row: not whole 64-bit words
    candidates = np.tile(np.arange(len(db)), (len(queries), 1))
    assert np.array_equal(-store.scores(candidates, queries), brute_hamming(db, queries, 24))


@pytest.mark.parametrize("kind, params", [("binary_flat", IndexParams()),
                                          ("binary_hnsw", IndexParams(hnsw_m=8, ef_search=400)),
                                          ("binary_ivf", IndexParams(nlist=4, nprobe=4))])
def test_binary_indexes_find_the_brute_force_hamming_neighbours(kind, params):
    db, queries = tied_data(5, n=600, d=64)
    index = build_prefix_index(db, 64, kind, params)
    assert index.ntotal == len(db) and index_bytes(index) >= len(db) * 8
    scores, positions = faiss_search(index, queries, 64, 12)
    distances = brute_hamming(db, queries, 64)
    best = np.sort(distances, axis=1)[:, :12]
    assert np.array_equal(-scores, best)  # the k best distances, exactly (graph searched widely, all cells)
    assert np.array_equal(np.take_along_axis(distances, positions, 1), best)  # each id at its stated distance
    keyed = np.take_along_axis(distances, positions, 1) * len(db) + positions
    assert (np.diff(keyed, axis=1) > 0).all()  # sorted by (distance, position)
    if kind == "binary_flat":  # exact: the same ids as brute force, ties by the lower position
        assert np.array_equal(positions, ranked(-distances.astype(float), 12))


def test_binary_kinds_need_whole_bytes():
    db, _ = random_data(6, n=50, q=1, d=16)
    with pytest.raises(ValueError, match="multiple of 8, got 12"):
        build_prefix_index(db, 12, "binary_flat")
    with pytest.raises(ValueError, match="multiple of 8, got 12"):
        CodeStore.build(db, "binary", 12)
    with pytest.raises(ValueError, match="code kind 'int4' is not accepted"):
        CodeStore.build(db, "int4", 8)


def memory_mapped(tmp_path, db):
    np.save(tmp_path / "vectors.npy", db)
    return np.load(tmp_path / "vectors.npy", mmap_mode="r")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_memory_mapped_rerank_returns_exactly_what_the_in_memory_one_does(tmp_path, dtype):
    db, queries = random_data(7, n=2000, q=20, d=64)
    db = db.astype(dtype)
    candidates = np.random.default_rng(7).integers(-1, len(db), size=(len(queries), 150))
    mapped = PrefixStore(memory_mapped(tmp_path, db))
    assert mapped.mapped and not PrefixStore(db).mapped
    for size in (16, 64):
        in_memory = rerank(candidates, PrefixStore(db), queries, size, 10)
        from_file = rerank(candidates, mapped, queries, size, 10)
        assert np.array_equal(in_memory[1], from_file[1]) and np.array_equal(in_memory[0], from_file[0])


def test_a_binary_shortlist_then_code_and_float_stages_equals_the_chained_reference(tmp_path):
    db, queries = random_data(8, n=3000, q=15, d=64)
    mapped = memory_mapped(tmp_path, db.astype(np.float16))
    stores = [CodeStore.build(mapped, "binary", 64), CodeStore.build(mapped, "int8", 32)]
    engine = SearchEngine(PrefixStore(mapped), {"bits": FaissSource(build_prefix_index(mapped, 32, "binary_flat"), 32)},
                          stores)
    plan = QueryPlan(mode="lean", k=5, shortlist=Shortlist(source="bits", k=300),
                     reranks=(Rerank(64, 100, "binary"), Rerank(32, 30, "int8"), Rerank(64, 5)))
    engine.check(plan)
    found = engine.run(plan, queries, profile=True)
    # the reference: the same stages, each called on its own
    _, shortlist = faiss_search(engine.sources["bits"].index, queries, 32, 300)
    _, step = stores[0].rerank(shortlist, queries, 100, sort=False)
    _, step = stores[1].rerank(step, queries, 30, sort=False)
    scores, positions = rerank(step, PrefixStore(mapped), queries, 64, 5)
    assert np.array_equal(found.positions, positions) and np.array_equal(found.scores, scores)
    assert [label for label, _ in found.stages] == ["binary_flat@32", "binary@64", "int8@32", "rerank@64"]
    assert found.vector_bytes == 30 * 64 * 2  # only the float stage reads the vector file: 30 rows x 64 x float16
    assert plan.describe()["reranks"] == [[64, 100, "binary"], [32, 30, "int8"], [64, 5]]


def test_resident_bytes_count_indexes_and_codes_not_the_memory_mapped_vectors(tmp_path):
    n, d = 4096, 128
    db, _ = random_data(9, n=n, q=1, d=d)
    index = build_prefix_index(db, 64, "binary_flat")
    int8 = CodeStore.build(db, "int8", 96)
    bits = CodeStore.build(db, "binary", 128)
    plan = QueryPlan(mode="lean", k=10, shortlist=Shortlist(source="bits", k=100),
                     reranks=(Rerank(128, 50, "binary"), Rerank(96, 20, "int8"), Rerank(128, 10)))
    known = n * 64 // 8 + n * 128 // 8 + (n * 96 + 96 * 4)  # sign bits of 64 and 128 dims, int8 of 96 + its steps
    on_file = SearchEngine(PrefixStore(memory_mapped(tmp_path, db)), {"bits": FaissSource(index, 64)}, [int8, bits])
    assert on_file.resident_bytes(plan) == on_file.resident_bytes() == known
    in_memory = SearchEngine(PrefixStore(db), {"bits": FaissSource(index, 64)}, [int8, bits])
    assert in_memory.resident_bytes(plan) == known + n * d * 4  # the float stage reads vectors held in memory
    codes_only = QueryPlan(mode="bits", k=10, shortlist=Shortlist(source="bits", k=100),
                           reranks=(Rerank(128, 10, "binary"),))
    assert in_memory.resident_bytes(codes_only) == n * 64 // 8 + n * 128 // 8  # reads no vectors, no int8


@pytest.mark.parametrize("stages, message", [
    ([(512, 40, "int8"), (512, 10)], None),
    ([(2048, 100, "binary"), (512, 40, "int8"), (None, 10)], None),
    ([(512, 40), (1024, 10, "int8")], "float \\(exact\\) reranks must come after the code stages"),
    ([(512, 40, "int8"), (256, 10, "binary")], "each stage reads more of a row"),
    ([(512, 40, "int4"), (1024, 10)], "codes one of \\['binary', 'int8', 'float'\\]"),
])
def test_code_stages_follow_the_funnel_rules(stages, message):
    if message is None:
        check_stages(stages)
    else:
        with pytest.raises(PlanError, match=message):
            check_stages(stages)


def test_a_plan_needing_codes_the_engine_lacks_is_refused_by_name():
    db, _ = random_data(10, n=100, q=1, d=32)
    engine = SearchEngine(db, {"s": FaissSource(build_prefix_index(db, 16), 16)}, [CodeStore.build(db, "binary", 32)])
    plan = QueryPlan(mode="lean", k=5, shortlist=Shortlist(source="s", k=50), reranks=(Rerank(24, 20, "int8"),
                                                                                      Rerank(32, 5)))
    with pytest.raises(PlanError, match=r"reranks with codes \['int8@24'\], which this index lacks \(it has "
                                        r"\['binary@32'\]"):
        engine.check(plan)


def test_binary_codes_of_float16_and_float32_rows_agree():
    db, _ = random_data(11, n=200, q=1, d=64)
    db[0, :4] = [0.0, -0.0, 1e-8, -1e-8]  # zeros are not positive; float16 flushes the tiny values to signed zeros
    half = db.astype(np.float16)
    assert np.array_equal(binary_codes(half, 64), np.packbits(half > 0, axis=1, bitorder="little"))
    assert np.array_equal(binary_codes(db, 64), np.packbits(db > 0, axis=1, bitorder="little"))
