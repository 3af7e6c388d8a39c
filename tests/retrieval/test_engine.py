"""The search executor (mrl.retrieval.engine) runs query plans exactly as chained reranks would, against the
brute-force reference."""

import numpy as np
import pytest

from mrl.retrieval.adanns import AdannsIVF
from mrl.retrieval.engine import CellSource, FaissSource, SearchEngine
from mrl.retrieval.indexes import IndexParams, build_prefix_index, faiss_search
from mrl.retrieval.plan import PlanError, QueryPlan, Rerank, Shortlist
from mrl.retrieval.store import rerank
from mrl.retrieval.topk import exact_search, normalize_prefix

from retrieval_reference import brute, data, random_data


def engine_over(db, **indexes):
    """An engine with one flat FAISS source per name=size."""
    return SearchEngine(db, {name: FaissSource(build_prefix_index(db, size), size) for name, size in indexes.items()})


def plan(source, k_first, stages=(), k=None):
    stages = tuple(Rerank(m, keep) for m, keep in stages)
    return QueryPlan(mode="test", shortlist=Shortlist(source=source, k=k_first),
                     reranks=stages, k=k or (stages[-1].keep if stages else k_first))


@pytest.mark.parametrize("shortlist_size, rerank_size", [(4, 16), (2, 8), (16, 16)])
def test_adaptive_plan_with_full_shortlist_equals_exact_search(shortlist_size, rerank_size):
    db, q = random_data(6, n=50, q=8, d=16)
    engine = engine_over(db, s=shortlist_size)
    result = engine.run(plan("s", 50, [(rerank_size, 10)]), q)
    ex_scores, ex_pos = exact_search(db, q, 10, size=rerank_size)
    assert np.array_equal(result.positions, ex_pos)
    np.testing.assert_allclose(result.scores, ex_scores, atol=1e-5)


def test_results_come_from_the_shortlist():
    db, q = random_data(7, n=50, q=5, d=16)
    engine = engine_over(db, s=4)
    _, short = faiss_search(engine.sources["s"].index, q, 4, 6)
    result = engine.run(plan("s", 6, [(16, 3)]), q)
    assert result.positions.shape == (5, 3) and np.array_equal(result.shortlist, short)
    for row, allowed in zip(result.positions, short):
        assert set(row.tolist()) <= set(allowed.tolist())


@pytest.mark.parametrize("k_first", [2000, 300])
def test_funnel_plan_matches_chained_reranks(k_first):
    db, q = data(2)
    stages = [(16, 100), (32, 50), (64, 10)]
    engine = engine_over(db, s=8)
    result = engine.run(plan("s", k_first, stages), q, profile=True)
    _, cand = faiss_search(engine.sources["s"].index, q, 8, k_first)
    for size, keep in stages:
        ref_scores, cand = rerank(cand, db, q, size, keep)
    assert result.positions.tolist() == cand.tolist()
    np.testing.assert_allclose(result.scores, ref_scores)
    assert [name for name, _ in result.stages] == ["flat@8", "rerank@16", "rerank@32", "rerank@64"]
    # multiply-adds: the flat shortlist scores every row at 8 dims, then each rerank its candidates
    assert result.madds == len(db) * 8 + k_first * 16 + 100 * 32 + 50 * 64


def test_one_wide_shortlist_then_a_full_rerank_is_exact():
    db, q = data(3)
    result = engine_over(db, s=8).run(plan("s", len(db), [(64, 10)]), q)
    assert result.positions.tolist() == brute(db, q, 64, 10).tolist()


def test_adanns_cells_fully_probed_then_scored_is_exact():
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
    engine = SearchEngine(db, {"cells": CellSource(ivf)})
    cells_plan = QueryPlan(mode="adanns", shortlist=Shortlist(source="cells", nprobe=ivf.nlist),
                           reranks=(Rerank(64, 10),), k=10)
    result = engine.run(cells_plan, q)
    assert result.positions.tolist() == brute(db, q, 64, 10).tolist()
    assert result.madds == pytest.approx(ivf.nlist * 8 + len(db) * 64)  # every member scored at 64 dims
    assert engine.smallest_prefix(cells_plan) == 8


def test_adanns_members_ranked_by_faiss_lists_match_the_members_reranked():
    """With the vectors, the cells source scores its members itself (FAISS IVF lists of the members' D_s
    prefixes, cells preassigned on D_c): same answers as gathering the members and reranking them, for a few
    and for all cells probed, with the fused stage alone or followed by later reranks."""
    db, q = data(6, n=2000)
    ivf = AdannsIVF.build(db, cluster_size=8, nlist=25)
    gathered = SearchEngine(db, {"cells": CellSource(ivf)})
    fused = SearchEngine(db, {"cells": CellSource(ivf, db, list_sizes=(32,))})
    assert fused.sources["cells"].can_rank and not gathered.sources["cells"].can_rank
    for nprobe, reranks in ((3, (Rerank(32, 40), Rerank(64, 10))), (25, (Rerank(32, 10),)), (5, (Rerank(16, 10),))):
        p = QueryPlan(mode="adanns", shortlist=Shortlist(source="cells", nprobe=nprobe), reranks=reranks, k=10)
        want, got = gathered.run(p, q), fused.run(p, q, profile=True)
        assert got.positions.tolist() == want.positions.tolist()
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
        assert got.stages[0][0] == f"adanns@8->{reranks[0].size}" and len(got.stages) == len(reranks)
        # the same members are scored at the first size, so the same work is counted
        assert got.madds == pytest.approx(want.madds)
    assert sorted(fused.sources["cells"]._lists) == [16, 32]  # 16 built on first use


def test_per_call_search_settings_do_not_leak_into_the_index():
    db, q = data(5, n=3000)
    index = build_prefix_index(db, 32, "ivf", IndexParams(nlist=64, nprobe=1))
    engine = SearchEngine(db, {"ivf": FaissSource(index, 32)})
    narrow = engine.run(plan("ivf", 10), q)
    wide = engine.run(QueryPlan(mode="t", shortlist=Shortlist(source="ivf", k=10, nprobe=64), k=10), q)
    _, exact = exact_search(db, q, 10, 32)
    assert wide.positions.tolist() == exact.tolist()  # every cell probed: exact
    assert narrow.positions.tolist() != exact.tolist() and index.nprobe == 1
    assert engine.run(plan("ivf", 10), q).positions.tolist() == narrow.positions.tolist()


def test_plans_are_checked_against_what_the_engine_has():
    db, _ = random_data(1, n=20, d=16)
    engine = engine_over(db, size_8=8)
    engine.check(plan("size_8", 10, [(16, 5)]))
    with pytest.raises(PlanError, match=r"needs shortlist source 'size_4', which this index lacks \(it has \['size_8'\]\)"):
        engine.check(plan("size_4", 10))
    with pytest.raises(PlanError, match=r"reranks at sizes \[32\], above d=16"):
        engine.check(plan("size_8", 10, [(32, 5)]))


@pytest.mark.parametrize("make, message", [
    (lambda: plan("s", 10, [(16, 5), (8, 5)]), "sizes must be > 0 and increase"),
    (lambda: plan("s", 10, [(8, 5), (16, 6)]), "keeps must be > 0 and must not grow"),
    (lambda: plan("s", 10, [(8, 20)]), "first rerank keeps 20, more than the shortlist's 10"),
    (lambda: plan("s", 10, [(8, 5)], k=6), "keeps 5 candidates at its last stage, fewer than k=6"),
    (lambda: QueryPlan(mode="t", shortlist=Shortlist(source="cells"), k=5), "needs a rerank stage"),
    (lambda: Shortlist(source="s", k=0), "shortlist k must be > 0"),
])
def test_malformed_plans_are_refused_by_name(make, message):
    with pytest.raises(PlanError, match=message):
        make()


def test_describe_names_every_stage():
    p = QueryPlan(mode="funnel", shortlist=Shortlist(source="size_16", k=200, nprobe=4),
                  reranks=(Rerank(32, 100), Rerank(64, 10)), k=10)
    assert p.describe() == {"mode": "funnel", "shortlist": {"source": "size_16", "k": 200, "nprobe": 4},
                            "reranks": [[32, 100], [64, 10]], "k": 10}
