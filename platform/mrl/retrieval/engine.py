"""The search executor: runs a `QueryPlan` over a batch of queries.

`SearchEngine` holds the rerank store (full-size vectors) and named shortlist sources (FAISS indexes on a
prefix, AdANNS cells). `run(plan, queries)` shortlists, then reranks stage by stage; nothing else in the
platform orchestrates stages: the service, the evaluation stage, the benchmark and the CLI all build plans
and call `run`, so the benchmark times exactly what the service runs.

Every run also reports the multiply-adds per query (FAISS's own counters for graph and IVF indexes) and,
when asked, the seconds each stage took.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mrl.retrieval.indexes import faiss_search
from mrl.retrieval.plan import QueryPlan, Shortlist, check_plan
from mrl.retrieval.store import PrefixStore, as_store, rerank


@dataclass
class Candidates:
    """A shortlist source's answer: positions (Q, L), -1 for empty slots; multiply-adds per query spent finding
    them; `width`, the candidates per query the first rerank scores (L, or the mean count of a padded set)."""

    positions: np.ndarray
    madds: float
    width: float
    scores: np.ndarray | None = None


class ShortlistSource(Protocol):
    """Anything that proposes candidates on one prefix size."""

    size: int  # the prefix it reads
    label: str  # how profiles name it, e.g. "ivf@16"

    def candidates(self, queries: np.ndarray, spec: Shortlist) -> Candidates: ...


class FaissSource:
    """A FAISS index built on the normalised prefix `size` (any kind of `mrl.retrieval.indexes`)."""

    def __init__(self, index, size: int, kind: str | None = None):
        self.index, self.size = index, size
        self.kind = kind or _kind_of(index)
        self.label = f"{self.kind}@{size}"

    def candidates(self, queries: np.ndarray, spec: Shortlist) -> Candidates:
        import faiss

        if spec.k is None:
            raise ValueError(f"shortlist source {spec.source!r} is a FAISS index: the plan must give its k")
        q = max(1, len(queries))
        faiss.cvar.hnsw_stats.reset()
        faiss.cvar.indexIVF_stats.reset()
        scores, positions = faiss_search(self.index, queries, self.size, spec.k, spec.nprobe, spec.ef_search)
        if self.kind == "hnsw":
            madds = faiss.cvar.hnsw_stats.ndis / q * self.size
        elif self.kind in ("ivf", "ivfpq"):
            per_code = self.index.pq.M if self.kind == "ivfpq" else self.size
            madds = self.index.nlist * self.size + faiss.cvar.indexIVF_stats.ndis / q * per_code
        else:
            madds = float(self.index.ntotal * self.size)
        return Candidates(positions, madds, positions.shape[1], scores)


class CellSource:
    """AdANNS cells (`mrl.retrieval.adanns.AdannsIVF`): the members of the `nprobe` nearest cells."""

    def __init__(self, cells):
        self.cells, self.size = cells, cells.cluster_size
        self.label = f"adanns@{self.size}"

    def candidates(self, queries: np.ndarray, spec: Shortlist) -> Candidates:
        positions = self.cells.candidates(queries, spec.nprobe)
        width = float((positions >= 0).sum()) / max(1, len(queries))
        return Candidates(positions, float(self.cells.nlist * self.size), width)


def _kind_of(index) -> str:
    import faiss

    for cls, kind in ((faiss.IndexHNSW, "hnsw"), (faiss.IndexIVFPQ, "ivfpq"), (faiss.IndexIVF, "ivf")):
        if isinstance(index, cls):
            return kind
    return "flat"


@dataclass
class SearchResult:
    """What a plan returned for a batch of Q queries.

    Attributes:
        scores, positions: (Q, k) best first; empty slots score -inf with position -1.
        shortlist: (Q, L) the first stage's candidates (for recall measurements).
        madds: multiply-adds per query.
        stages: (label, seconds) per stage when profiled, else empty.
    """

    scores: np.ndarray
    positions: np.ndarray
    shortlist: np.ndarray
    madds: float
    stages: list[tuple[str, float]] = field(default_factory=list)


class SearchEngine:
    """Shortlist sources plus the rerank store; runs query plans.

    Args:
        store: the full-size vectors (a `PrefixStore`, or an (N, d) array to wrap in one).
        sources: shortlist source name -> source (`FaissSource`, `CellSource`, or any `ShortlistSource`).
    """

    def __init__(self, store, sources: Mapping[str, ShortlistSource] | None = None):
        self.store: PrefixStore = as_store(store)
        self.sources: dict[str, ShortlistSource] = dict(sources or {})

    @property
    def dim(self) -> int:
        return self.store.dim

    def __len__(self) -> int:
        return len(self.store)

    def source_sizes(self) -> dict[str, int]:
        """Source name -> the prefix size it reads (what `check_plan` needs)."""
        return {name: src.size for name, src in self.sources.items()}

    def check(self, plan: QueryPlan) -> None:
        """Raise `PlanError` unless this engine can run `plan` (see `mrl.retrieval.plan.check_plan`)."""
        check_plan(plan, self.source_sizes(), self.dim)

    def can_run(self, plan: QueryPlan) -> bool:
        try:
            self.check(plan)
        except ValueError:
            return False
        return True

    def smallest_prefix(self, plan: QueryPlan) -> int:
        """The smallest prefix the plan reads: a query that is zero there has no direction to search with
        (prefixes nest, so a query nonzero there is nonzero on every later stage's prefix)."""
        return min([self.sources[plan.shortlist.source].size, *plan.sizes()])

    def run(self, plan: QueryPlan, queries: np.ndarray, profile: bool = False) -> SearchResult:
        """Execute `plan` for queries (Q, >= every size it reads), raw (any norm).

        Args:
            profile: record the seconds of every stage in `SearchResult.stages`.
        """
        stages: list[tuple[str, float]] = []
        source = self.sources[plan.shortlist.source]
        t0 = time.perf_counter()
        found = source.candidates(queries, plan.shortlist)
        if profile:
            stages.append((source.label, time.perf_counter() - t0))
        scores, positions, kept, madds = found.scores, found.positions, found.width, found.madds
        for i, stage in enumerate(plan.reranks):
            t0 = time.perf_counter()
            madds += kept * stage.size
            scores, positions = rerank(positions, self.store, queries, stage.size, stage.keep,
                                       sort=i == len(plan.reranks) - 1)
            kept = stage.keep
            if profile:
                stages.append((f"rerank@{stage.size}", time.perf_counter() - t0))
        return SearchResult(scores[:, :plan.k], positions[:, :plan.k], found.positions, madds, stages)

