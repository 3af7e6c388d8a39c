"""Query plans: what a staged search does, as a small typed value the engine executes.

A plan is a shortlist (a named source, e.g. the FAISS index on the 16-d prefix, returning K candidates, or
AdANNS cells returning their members) followed by exact rerank stages (prefix size, candidates kept), each
rescoring the survivors at a larger prefix. Exact or graph search at full size is a shortlist at d with no
rerank; adaptive retrieval has one rerank (D_r); the funnel has several. Search modes
(`mrl.retrieval.modes`) are functions that make plans; `mrl.retrieval.engine.SearchEngine` runs them.

`check_stages` is the one place the shape rules of rerank stages live: configs (service funnel,
benchmark searches) and plans all call it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class PlanError(ValueError):
    """A plan is malformed or cannot run on the given index (the message names what is missing)."""


def check_stages(stages: Sequence[tuple[int | None, int]], *, after_size: int | None = None,
                 after_keep: int | None = None) -> None:
    """Rerank stages (size, keep), size None meaning d: sizes > 0 and strictly increasing (above `after_size`,
    the shortlist's prefix, when given), None only last; keeps > 0, never growing, and <= `after_keep` (the
    shortlist length, when given).

    Raises:
        PlanError: naming the stages and the broken rule.
    """
    shown = [list(st) for st in stages]
    sizes = [m for m, _ in stages if m is not None]
    nulls = [i for i, (m, _) in enumerate(stages) if m is None]
    if nulls not in ([], [len(stages) - 1]) or any(m <= 0 for m in sizes) or sizes != sorted(set(sizes)):
        raise PlanError(f"rerank sizes must be > 0 and increase, with null (= d) only last; got {shown}")
    if after_size is not None and sizes and sizes[0] <= after_size:
        raise PlanError(f"rerank sizes must grow from above the shortlist's size {after_size}; got {shown}")
    keeps = [k for _, k in stages]
    if any(k <= 0 for k in keeps) or keeps != sorted(keeps, reverse=True):
        raise PlanError(f"rerank keeps must be > 0 and must not grow from stage to stage; got {shown}")
    if after_keep is not None and keeps and keeps[0] > after_keep:
        raise PlanError(f"the first rerank keeps {keeps[0]}, more than the shortlist's {after_keep}; got {shown}")


@dataclass(frozen=True, kw_only=True)
class Shortlist:
    """The first stage: which source proposes candidates, and how many.

    Attributes:
        source: name of a shortlist source of the engine (an index artifact names its FAISS indexes
            `size_<m>` and its AdANNS cells `adanns`; a benchmark names its own).
        k: candidates taken (K); None for sources whose candidates are a set (AdANNS: the probed cells' members).
        nprobe: IVF / AdANNS cells probed; None: the source's own setting.
        ef_search: HNSW search breadth; None: the index's own setting.
    """

    source: str
    k: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None

    def __post_init__(self) -> None:
        for name in ("k", "nprobe", "ef_search"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise PlanError(f"shortlist {name} must be > 0, got {value}")


@dataclass(frozen=True)
class Rerank:
    """Rescore the candidates exactly on the normalised prefix `size` and keep the best `keep`."""

    size: int
    keep: int


@dataclass(frozen=True, kw_only=True)
class QueryPlan:
    """A staged search returning the best `k` per query.

    Attributes:
        mode: the search mode that made it (for replies and profiles).
        shortlist: the first stage.
        reranks: exact rerank stages in order (sizes increasing, keeps not growing).
        k: results returned (<= what the last stage keeps).
    """

    mode: str
    shortlist: Shortlist
    reranks: tuple[Rerank, ...] = ()
    k: int

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise PlanError(f"k must be > 0, got {self.k}")
        check_stages([(r.size, r.keep) for r in self.reranks], after_keep=self.shortlist.k)
        if self.shortlist.k is None and not self.reranks:
            raise PlanError(f"shortlist source {self.shortlist.source!r} proposes a candidate set without scores: "
                            "the plan needs a rerank stage")
        last = self.reranks[-1].keep if self.reranks else self.shortlist.k
        if last < self.k:
            raise PlanError(f"the plan keeps {last} candidates at its last stage, fewer than k={self.k}")

    def sizes(self) -> list[int]:
        """Prefix sizes the rerank stages read, in order."""
        return [r.size for r in self.reranks]

    def describe(self) -> dict[str, Any]:
        """A JSON-able account of the plan (what a reply's `search` field shows)."""
        shortlist = {"source": self.shortlist.source, "k": self.shortlist.k}
        shortlist.update({key: getattr(self.shortlist, key) for key in ("nprobe", "ef_search")
                          if getattr(self.shortlist, key) is not None})
        return {"mode": self.mode, "shortlist": shortlist, "reranks": [[r.size, r.keep] for r in self.reranks],
                "k": self.k}


def check_plan(plan: QueryPlan, sources: Mapping[str, int], dim: int) -> None:
    """Whether an index with shortlist `sources` (name -> prefix size) over d-dimensional vectors can run `plan`.

    The single rule for "what an index can serve": the engine (hence the service), the search modes'
    `check_settings` (hence the pipeline's up-front config check) and the benchmark all call it.

    Raises:
        PlanError: naming the missing source or the stage whose size is above d.
    """
    if plan.shortlist.source not in sources:
        raise PlanError(f"{plan.mode!r} search needs shortlist source {plan.shortlist.source!r}, which this index "
                        f"lacks (it has {sorted(sources)})")
    too_big = [r.size for r in plan.reranks if r.size > dim]
    if too_big:
        raise PlanError(f"{plan.mode!r} search reranks at sizes {too_big}, above d={dim}")
