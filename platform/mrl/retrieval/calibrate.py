"""Per-request budgets: a calibration table of candidate plans, measured on held-out queries when the index is
built, and the rule that picks a plan for a budget.

The table lists adaptive plans (shortlist K on each indexed prefix below d, rerank at d), for an index that
keeps compact codes the same shortlists funnelled through its code stages before the float rerank (each stage
keeping a quarter of the last, never below 2k: `code_funnel`), and the full-size search. For each: `recall`,
the share of the exact full-size top-k it returns (mean over the calibration queries), and `p50_ms`, the
median time the engine takes for one query alone on the machine that built the index (the search only: HTTP
and batching come on top). The index manifest carries the table; a request's `{"budget": {"latency_ms": x}}`
gets the most accurate plan whose p50_ms fits, `{"budget": {"recall": r}}` the fastest plan whose recall
reaches r; when none does, the closest (fastest, or most accurate) and `met: false`."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mrl.retrieval.indexes import BINARY_KINDS
from mrl.retrieval.modes import SearchSettings, index_source, make_plan
from mrl.retrieval.plan import BITS
from mrl.retrieval.quality import exact_engine, exact_plan

SHORTLIST_FACTORS = (2, 5, 10, 20, 50)  # candidate K = factor * k


def code_funnel(codes: list[tuple[str, int]], shortlist_k: int, k: int) -> list[list[Any]]:
    """Funnel stages through the code stores (kind, size), in the order of the bits they read, each keeping a
    quarter of the candidates before it (never below 2k), then the float rerank at d."""
    stages, keep = [], shortlist_k
    for kind, size in sorted(codes, key=lambda c: c[1] * BITS[c[0]]):
        keep = max(min(keep, 2 * k), keep // 4)
        stages.append([size, keep, kind])
    return stages + [[None, k]]


def candidate_settings(sizes: list[int], dim: int, rows: int, k: int,
                       codes: list[tuple[str, int]] = ()) -> list[dict[str, Any]]:
    """Adaptive settings for every indexed prefix below d and every K in `SHORTLIST_FACTORS` * k (within the
    corpus), the same shortlists funnelled through the code stores when there are any, then the full-size
    search when d is indexed."""
    shortlists = [(m, min(rows, f * k)) for m in sizes if m < dim for f in SHORTLIST_FACTORS
                  if f * k <= rows or f == SHORTLIST_FACTORS[0]]
    out = [{"mode": "adaptive", "shortlist_size": m, "shortlist_k": kk} for m, kk in shortlists]
    if codes:
        out += [{"mode": "funnel", "shortlist_size": m, "shortlist_k": kk, "funnel": code_funnel(list(codes), kk, k)}
                for m, kk in shortlists]
    if dim in sizes:
        out.append({"mode": "full"})
    return list({repr(sorted(s.items())): s for s in out}.values())  # K capped at rows can repeat


def plan_of(setting: dict[str, Any], dim: int, k: int):
    """The `QueryPlan` of one calibration setting."""
    fields = {key: value for key, value in setting.items() if key != "mode"}
    if fields.get("funnel") is not None:
        fields["funnel"] = tuple(tuple(stage) for stage in fields["funnel"])
    return make_plan(setting["mode"], SearchSettings(**fields), dim, k)


def calibrate(engine, queries: np.ndarray, sizes: list[int], k: int = 10, timed: int = 200,
              truth: np.ndarray | None = None) -> dict[str, Any]:
    """Measure every candidate plan on `queries` (held-out, (Q, d)).

    Args:
        engine: the index's `SearchEngine`, or a `mrl.retrieval.sharded.ShardedEngine` (then a query's time is
            its slowest shard plus the merge, as shards searched in parallel take, and `truth` is required).
        queries: calibration queries (not the evaluation's, where a benchmark tunes on them).
        sizes: the indexed prefix sizes.
        k: results per query the recall is measured at.
        timed: how many of the queries are timed one at a time for p50_ms.
        truth: the exact top-k (Q, k) in what `engine.run` returns (positions; ids for shards); None: searched
            here.

    Returns:
        {"k", "queries", "rows": [{"setting", "recall", "p50_ms"}, ...] sorted by p50_ms}.
    """
    dim = engine.dim
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if truth is None:
        truth = _exact_top_k(engine, queries, k)
    rows = []
    for setting in candidate_settings(sizes, dim, len(engine), k, engine.code_keys()):
        plan = plan_of(setting, dim, k)
        found = engine.run(plan, queries).positions
        recall = float(np.mean([len(set(f[f >= 0]) & set(t[t >= 0])) / k for f, t in zip(found, truth)]))
        times = []
        for q in queries[:timed]:
            t0 = time.perf_counter()
            engine.run(plan, q[None])
            elapsed = time.perf_counter() - t0
            times.append(getattr(engine, "last_critical_ms", 1000 * elapsed) / 1000)
        rows.append({"setting": setting, "recall": round(recall, 4), "p50_ms": round(1000 * float(np.median(times)), 4)})
    rows.sort(key=lambda r: (r["p50_ms"], -r["recall"]))
    return {"k": k, "queries": int(len(queries)), "rows": rows}


def _exact_top_k(engine, queries: np.ndarray, k: int) -> np.ndarray:
    """The exact full-size top-k positions: the engine's own float index at d, else an exact search of the
    stored vectors, in blocks (no index at d, or one that ranks sign bits)."""
    dim = engine.dim
    full = engine.sources.get(index_source(dim))
    if full is not None and getattr(full, "kind", "") not in BINARY_KINDS:
        return engine.run(make_plan("full", SearchSettings(), dim, k), queries).positions
    return exact_engine(engine.store.vectors, [dim], device="cpu").run(exact_plan(index_source(dim), k),
                                                                          queries).positions


def plan_for_budget(table: dict[str, Any], budget: dict[str, float]) -> dict[str, Any]:
    """The calibration row a budget picks, with whether the budget is met.

    Args:
        table: what `calibrate` returned.
        budget: {"latency_ms": x} or {"recall": r}.

    Returns:
        {"setting", "recall", "p50_ms", "met"}.
    """
    rows = table["rows"]
    if "latency_ms" in budget:
        fits = [r for r in rows if r["p50_ms"] <= budget["latency_ms"]]
        if fits:
            best = max(fits, key=lambda r: (r["recall"], -r["p50_ms"]))
            return {**best, "met": True}
        return {**min(rows, key=lambda r: (r["p50_ms"], -r["recall"])), "met": False}
    fits = [r for r in rows if r["recall"] >= budget["recall"]]
    if fits:
        return {**min(fits, key=lambda r: (r["p50_ms"], -r["recall"])), "met": True}
    return {**max(rows, key=lambda r: (r["recall"], -r["p50_ms"])), "met": False}
