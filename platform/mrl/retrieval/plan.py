"""Query plans: what a staged search does, as a small typed value the engine executes.

A plan is a shortlist (a named source, e.g. the FAISS index on the 16-d prefix, returning K candidates, or
AdANNS cells returning their members) followed by rerank stages (prefix size, candidates kept, and what the
stage scores with: the float vectors, exactly, or compact codes of the prefix held in RAM, `binary` or `int8`,
see `mrl.retrieval.codes`), each rescoring the survivors at a larger prefix or a finer code. Exact or graph
search at full size is a shortlist at d with no rerank; adaptive retrieval has one rerank (D_r); the funnel
has several. Search modes (`mrl.retrieval.modes`) are functions that make plans;
`mrl.retrieval.engine.SearchEngine` runs them.

`check_stages` is the one place the shape rules of rerank stages live: configs (service funnel,
benchmark searches) and plans all call it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class PlanError(ValueError):
    """A plan is malformed or cannot run on the given index (the message names what is missing)."""


CODES = ("binary", "int8", "float")  # what a rerank stage scores with, coarsest first
BITS = {"binary": 1, "int8": 8, "float": 32}  # bits a stage reads per dimension, nominally (float16 rows: 16)


def stage_codes(stage: Sequence) -> str:
    """What a (size, keep[, codes]) stage scores with: its third item, or float."""
    return stage[2] if len(stage) > 2 else "float"


def check_stages(stages: Sequence[Sequence], *, after_size: int | None = None,
                 after_keep: int | None = None) -> None:
    """Rerank stages (size, keep) or (size, keep, codes), size None meaning d, codes binary | int8 | float
    (default): sizes > 0, None only last; each stage reads more bits of a row than the one before (size x 1
    for binary, x 8 for int8, x 32 for float: float sizes increase, and e.g. binary@2048 -> int8@512 -> float@512
    is a funnel), float (exact) stages after every code stage; the first float size above `after_size`, the
    shortlist's prefix, when given; keeps > 0, never growing, and <= `after_keep` (the shortlist length, when
    given).

    Raises:
        PlanError: naming the stages and the broken rule.
    """
    shown = [list(st) for st in stages]
    bad = [c for c in map(stage_codes, stages) if c not in CODES]
    if bad or any(len(st) not in (2, 3) for st in stages):
        raise PlanError(f"rerank stages are [size, keep] or [size, keep, codes] with codes one of {list(CODES)}; "
                        f"got {shown}")
    sizes = [m for m, *_ in stages if m is not None]
    nulls = [i for i, (m, *_) in enumerate(stages) if m is None]
    if nulls not in ([], [len(stages) - 1]) or any(m <= 0 for m in sizes):
        raise PlanError(f"rerank sizes must be > 0 and increase, with null (= d) only last; got {shown}")
    kinds = [stage_codes(st) for st in stages]
    if "float" in kinds and any(c != "float" for c in kinds[kinds.index("float"):]):
        raise PlanError(f"float (exact) reranks must come after the code stages; got {shown}")
    bits = [st[0] * BITS[stage_codes(st)] for st in stages if st[0] is not None]
    if bits != sorted(set(bits)):
        raise PlanError(f"rerank sizes must be > 0 and increase: each stage reads more of a row than the one before "
                        f"(size x 1 bit for binary, x 8 for int8, x 32 for float), null (= d) only last; got {shown}")
    floats = [st[0] for st in stages if stage_codes(st) == "float" and st[0] is not None]
    if after_size is not None and floats and floats[0] <= after_size:
        raise PlanError(f"rerank sizes must grow from above the shortlist's size {after_size}; got {shown}")
    keeps = [k for _, k, *_ in stages]
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
    """Rescore the candidates on the prefix `size` and keep the best `keep`: exactly from the float vectors
    (cosine of the normalised prefixes), or from the prefix's `binary` (Hamming) or `int8` codes."""

    size: int
    keep: int
    codes: str = "float"

    @property
    def label(self) -> str:
        """How profiles name the stage: rerank@512, int8@512, binary@2048."""
        return f"rerank@{self.size}" if self.codes == "float" else f"{self.codes}@{self.size}"

    def spec(self) -> list:
        """[size, keep], or [size, keep, codes] for a code stage (as configs and replies write stages)."""
        return [self.size, self.keep] + ([self.codes] if self.codes != "float" else [])


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
        check_stages([r.spec() for r in self.reranks], after_keep=self.shortlist.k)
        if self.shortlist.k is None and not self.reranks:
            raise PlanError(f"shortlist source {self.shortlist.source!r} proposes a candidate set without scores: "
                            "the plan needs a rerank stage")
        last = self.reranks[-1].keep if self.reranks else self.shortlist.k
        if last < self.k:
            raise PlanError(f"the plan keeps {last} candidates at its last stage, fewer than k={self.k}")

    def sizes(self) -> list[int]:
        """Prefix sizes the rerank stages read, in order."""
        return [r.size for r in self.reranks]

    def code_stages(self) -> list[tuple[str, int]]:
        """(codes, size) of the stages that score with compact codes, in order."""
        return [(r.codes, r.size) for r in self.reranks if r.codes != "float"]

    def describe(self) -> dict[str, Any]:
        """A JSON-able account of the plan (what a reply's `search` field shows)."""
        shortlist = {"source": self.shortlist.source, "k": self.shortlist.k}
        shortlist.update({key: getattr(self.shortlist, key) for key in ("nprobe", "ef_search")
                          if getattr(self.shortlist, key) is not None})
        return {"mode": self.mode, "shortlist": shortlist, "reranks": [r.spec() for r in self.reranks],
                "k": self.k}


def check_plan(plan: QueryPlan, sources: Mapping[str, int], dim: int,
               codes: Collection[tuple[str, int]] = ()) -> None:
    """Whether an index with shortlist `sources` (name -> prefix size) and code stores `codes` ((kind, size)
    pairs) over d-dimensional vectors can run `plan`.

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
    missing = [f"{kind}@{size}" for kind, size in plan.code_stages() if (kind, size) not in set(codes)]
    if missing:
        have = sorted(f"{kind}@{size}" for kind, size in codes)
        raise PlanError(f"{plan.mode!r} search reranks with codes {missing}, which this index lacks (it has "
                        f"{have or 'none'}; index.codes lists the codes an index keeps)")
