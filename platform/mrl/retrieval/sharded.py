"""Sharded search: rows split into shards by a stable hash of their id or by id ranges, one query plan run on every
shard, and the shards' top-k merged exactly (ties by the lower id).

The pieces are pure functions of arrays and plans, so the service (one Ray Serve deployment per shard, the
Retriever merging, `mrl.service.shards`), the index stage's calibration and the tests run the same code:

    assign_shards(ids, n, by)     -> shard number of each row (`hash`: splitmix64 of the id mod n; `range`: n runs
                                     of sorted ids of equal length, split at `range_starts`)
    shard_plan(plan, n, rule)     -> the plan each shard runs: `each` keeps the plan's K and keeps (every shard
                                     shortlists K: the merged answer holds at least what one index would find),
                                     `split` gives each shard ceil(K / n) (never below k), so the shards together
                                     read about what one index would
    shard_hits(artifact, plan, q) -> one shard's top-k as ids, scores and labels (`Hits`)
    merge_hits(parts, k)          -> the exact top-k of the union
    ShardedEngine                 -> shards in one process behind `SearchEngine.run`'s signature (calibration, the
                                     reference the service is tested against)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from mrl.retrieval.engine import SearchResult
from mrl.retrieval.plan import QueryPlan, Rerank
from mrl.retrieval.topk import top_k

SHARD_BY = ("hash", "range")
SHARD_RULES = ("each", "split")
ShardBy = Literal["hash", "range"]
ShardRule = Literal["each", "split"]


def id_hash(ids: np.ndarray) -> np.ndarray:
    """splitmix64 of int64 ids as uint64: a stable, well-mixed hash (the same on every machine and version)."""
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def range_starts(ids: np.ndarray, n: int) -> list[int]:
    """The first id of each of n shards of sorted ids of (nearly) equal length."""
    ordered = np.sort(np.asarray(ids, dtype=np.int64))
    return [int(ordered[(i * len(ordered)) // n]) for i in range(n)]


def assign_shards(ids: np.ndarray, n: int, by: str, starts: list[int] | None = None) -> np.ndarray:
    """Shard number (0..n-1) of each id: by hash, or by the id ranges that begin at `starts` (`range_starts`)."""
    ids = np.asarray(ids, dtype=np.int64)
    if by == "hash":
        return (id_hash(ids) % np.uint64(n)).astype(np.int64)
    if by == "range":
        if starts is None or len(starts) != n:
            raise ValueError(f"range sharding needs the {n} shards' first ids, got {starts}")
        return np.maximum(np.searchsorted(np.asarray(starts, dtype=np.int64), ids, side="right") - 1, 0)
    raise ValueError(f"shard_by {by!r} is not one of {list(SHARD_BY)}")


def shard_plan(plan: QueryPlan, n: int, rule: str) -> QueryPlan:
    """The plan each of n shards runs for `plan`: the same (`each`), or with the shortlist K and the
    intermediate keeps split across the shards (`split`: ceil(x / n), never below k; the last stage keeps k)."""
    if rule == "each" or n == 1:
        return plan
    if rule != "split":
        raise ValueError(f"shard rule {rule!r} is not one of {list(SHARD_RULES)}")

    def part(x: int) -> int:
        return max(plan.k, math.ceil(x / n))

    shortlist = plan.shortlist if plan.shortlist.k is None else replace(plan.shortlist, k=part(plan.shortlist.k))
    last = len(plan.reranks) - 1
    reranks = tuple(r if i == last else Rerank(r.size, part(r.keep), r.codes) for i, r in enumerate(plan.reranks))
    return replace(plan, shortlist=shortlist, reranks=reranks)


@dataclass
class Hits:
    """The top-k of a batch of queries, by id: scores, ids and labels (Q, k), -1 ids (score -inf) in empty slots
    at the end; `vector_bytes` (Q,) read from full vectors for each query (summed over shards when merged)."""

    scores: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    vector_bytes: np.ndarray


def shard_hits(artifact, plan: QueryPlan, queries: np.ndarray) -> Hits:
    """Run `plan` on one index artifact (`IndexArtifact`: a shard, or a whole index) and name its rows by id."""
    result = artifact.engine.run(plan, queries)
    keep = result.positions >= 0
    at = np.maximum(result.positions, 0)
    ids = np.where(keep, artifact.ids[at], -1)
    labels = np.where(keep, artifact.labels[at], -1)
    scores = np.where(keep, result.scores, -np.inf).astype(np.float32)
    per_query = np.full(len(queries), result.vector_bytes)  # the engine counts bytes per query
    return Hits(scores, ids.astype(np.int64), labels.astype(np.int64), per_query)


def merge_hits(parts: list[Hits], k: int) -> Hits:
    """The exact top-k of the union of shards' hits (ties by the lower id; a row is in one shard only)."""
    scores = np.concatenate([p.scores for p in parts], axis=1).astype(np.float32)
    ids = np.concatenate([p.ids for p in parts], axis=1)
    labels = np.concatenate([p.labels for p in parts], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf)
    tie = np.where(ids >= 0, ids, np.iinfo(np.int64).max)
    best, order = top_k(scores, min(k, scores.shape[1]), ids=tie)
    found = np.isfinite(best)
    return Hits(best, np.where(found, np.take_along_axis(ids, order, 1), -1),
                np.where(found, np.take_along_axis(labels, order, 1), -1),
                np.sum([p.vector_bytes for p in parts], axis=0))


class ShardedEngine:
    """Index shards in one process, searched one after another and merged: `run` has `SearchEngine.run`'s
    signature and returns ids where a `SearchEngine` returns positions. `last_critical_ms` is the last call's
    slowest shard plus the merge (what shards searched in parallel would take)."""

    def __init__(self, shards: list, rule: str = "each"):
        self.shards, self.rule = shards, rule
        self.last_critical_ms = 0.0

    @property
    def dim(self) -> int:
        return self.shards[0].engine.dim

    def __len__(self) -> int:
        return sum(len(s.ids) for s in self.shards)

    def code_keys(self) -> list[tuple[str, int]]:
        return self.shards[0].engine.code_keys()

    def hits(self, plan: QueryPlan, queries: np.ndarray) -> Hits:
        each = shard_plan(plan, len(self.shards), self.rule)
        parts, slowest = [], 0.0
        for shard in self.shards:
            t0 = time.perf_counter()
            parts.append(shard_hits(shard, each, queries))
            slowest = max(slowest, time.perf_counter() - t0)
        t0 = time.perf_counter()
        merged = merge_hits(parts, plan.k)
        self.last_critical_ms = 1000 * (slowest + time.perf_counter() - t0)
        return merged

    def run(self, plan: QueryPlan, queries: np.ndarray, profile: bool = False) -> SearchResult:
        found = self.hits(plan, queries)
        return SearchResult(found.scores, found.ids, found.ids, 0.0, float(found.vector_bytes.sum()))


def shard_summary(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """What a sharded index manifest says of its shards (None for a whole index): count, rule, and per shard its
    directory, rows and id range."""
    shards = manifest.get("shards")
    if not shards:
        return None
    return {"count": len(shards["list"]), "by": shards["by"], "rule": shards["rule"],
            "list": [{key: s[key] for key in ("path", "rows", "id_min", "id_max")} for s in shards["list"]]}
