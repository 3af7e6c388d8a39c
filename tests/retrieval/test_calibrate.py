"""Budgets: the calibration table's candidate plans, its measurements, and the rule that picks a plan."""

import numpy as np
import pytest

from mrl.artifacts.index import load_index, write_index
from mrl.retrieval.calibrate import calibrate, candidate_settings, plan_for_budget, plan_of
from mrl.retrieval.topk import exact_search

TABLE = {"k": 10, "queries": 100, "rows": [
    {"setting": {"mode": "adaptive", "shortlist_size": 8, "shortlist_k": 20}, "recall": 0.80, "p50_ms": 0.2},
    {"setting": {"mode": "adaptive", "shortlist_size": 8, "shortlist_k": 100}, "recall": 0.93, "p50_ms": 0.4},
    {"setting": {"mode": "adaptive", "shortlist_size": 16, "shortlist_k": 100}, "recall": 0.97, "p50_ms": 0.6},
    {"setting": {"mode": "full"}, "recall": 1.0, "p50_ms": 1.5},
]}


@pytest.mark.parametrize("budget, picked, met", [
    ({"latency_ms": 0.5}, 1, True),     # the most accurate plan within 0.5 ms
    ({"latency_ms": 10}, 3, True),      # everything fits: the exact one
    ({"latency_ms": 0.1}, 0, False),    # nothing fits: the fastest, flagged
    ({"recall": 0.95}, 2, True),        # the fastest plan reaching 0.95
    ({"recall": 0.5}, 0, True),
    ({"recall": 1.0}, 3, True),
])
def test_a_budget_picks_by_hand(budget, picked, met):
    got = plan_for_budget(TABLE, budget)
    assert got["setting"] == TABLE["rows"][picked]["setting"] and got["met"] is met


def test_an_unreachable_recall_gets_the_most_accurate_plan_flagged():
    rows = TABLE["rows"][:3]
    got = plan_for_budget({**TABLE, "rows": rows}, {"recall": 0.99})
    assert got["setting"] == rows[2]["setting"] and got["met"] is False


def test_candidates_cover_every_prefix_below_d_and_the_full_search():
    settings = candidate_settings([8, 16, 64], dim=64, rows=1000, k=10)
    assert {s["shortlist_size"] for s in settings if s["mode"] == "adaptive"} == {8, 16}
    assert sorted({s["shortlist_k"] for s in settings if s["mode"] == "adaptive"}) == [20, 50, 100, 200, 500]
    assert {"mode": "full"} in settings
    small = candidate_settings([8, 64], dim=64, rows=60, k=10)  # K never above the corpus
    assert max(s["shortlist_k"] for s in small if s["mode"] == "adaptive") <= 60


def test_without_an_index_at_d_recall_is_measured_against_brute_force(tmp_path):
    """An index without the full size has no `full` plan: the truth is the exact search of the stored vectors."""
    rng = np.random.default_rng(2)
    vectors, queries = rng.normal(size=(300, 12)).astype(np.float32), rng.normal(size=(7, 12)).astype(np.float32)
    write_index(tmp_path / "ix", np.arange(300), np.zeros(300, np.int64), vectors, [4], "flat", {})
    engine = load_index(tmp_path / "ix").engine
    table = calibrate(engine, queries, [4], k=5, timed=2)
    truth = exact_search(vectors, queries, 5)[1]
    assert all(r["setting"]["mode"] == "adaptive" for r in table["rows"])
    for row in table["rows"]:
        found = engine.run(plan_of(row["setting"], 12, 5), queries).positions
        by_hand = np.mean([len(set(f) & set(t)) / 5 for f, t in zip(found, truth)])
        assert row["recall"] == pytest.approx(by_hand, abs=1e-4)
    assert max(r["recall"] for r in table["rows"]) > min(r["recall"] for r in table["rows"])


def test_calibration_measures_recall_against_the_full_search(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(800, 32)).astype(np.float32)
    write_index(tmp_path / "ix", np.arange(800), np.zeros(800, np.int64), vectors, [4, 8, 32], "flat", {})
    table = calibrate(load_index(tmp_path / "ix").engine, rng.normal(size=(40, 32)), [4, 8, 32], k=10, timed=5)
    by = {tuple(sorted(r["setting"].items())): r for r in table["rows"]}
    assert by[(("mode", "full"),)]["recall"] == 1.0
    for m in (4, 8):  # a longer shortlist on the same prefix never finds less
        recalls = [by[(("mode", "adaptive"), ("shortlist_k", kk), ("shortlist_size", m))]["recall"]
                   for kk in (20, 50, 100, 200, 500)]
        assert recalls == sorted(recalls) and recalls[-1] > recalls[0]
    assert all(r["p50_ms"] > 0 for r in table["rows"]) and table["k"] == 10 and table["queries"] == 40
    assert [r["p50_ms"] for r in table["rows"]] == sorted(r["p50_ms"] for r in table["rows"])


def test_an_index_with_codes_calibrates_its_code_funnels_and_a_budget_can_pick_one(tmp_path):
    """A binary graph with binary and int8 codes: the table holds, beside each adaptive plan, the same shortlist
    funnelled through the codes, each row's recall is what that plan returns, and a budget may pick it."""
    from mrl.retrieval.calibrate import code_funnel

    assert code_funnel([("int8", 32), ("binary", 64)], 200, 10) == [[64, 50, "binary"], [32, 20, "int8"],
                                                                    [None, 10]]
    rng = np.random.default_rng(3)
    vectors, queries = rng.normal(size=(600, 64)).astype(np.float32), rng.normal(size=(20, 64)).astype(np.float32)
    write_index(tmp_path / "ix", np.arange(600), np.zeros(600, np.int64), vectors, [16, 64], "binary_hnsw", {},
                codes=[(64, "binary"), (32, "int8")])
    engine = load_index(tmp_path / "ix").engine
    table = calibrate(engine, queries, [16, 64], k=5, timed=3)
    funnels = [r for r in table["rows"] if r["setting"]["mode"] == "funnel"]
    adaptive = [r for r in table["rows"] if r["setting"]["mode"] == "adaptive"]
    assert len(funnels) == len(adaptive) == 5 and {"mode": "full"} in [r["setting"] for r in table["rows"]]
    truth = exact_search(vectors, queries, 5)[1]  # not the binary graph's own Hamming ranking at d
    for row in funnels + adaptive:
        plan = plan_of(row["setting"], 64, 5)
        assert plan.code_stages() == ([("binary", 64), ("int8", 32)] if row in funnels else [])
        found = engine.run(plan, queries).positions
        assert row["recall"] == pytest.approx(np.mean([len(set(f) & set(t)) / 5 for f, t in zip(found, truth)]),
                                              abs=1e-4)
    best_funnel = max(funnels, key=lambda r: (r["recall"], -r["p50_ms"]))
    assert plan_for_budget({"k": 5, "rows": funnels}, {"recall": best_funnel["recall"]})["setting"]["mode"] == "funnel"
