"""Search modes: each is a function (settings, d, k) -> `QueryPlan`, registered in `SEARCH_MODES`.

Adding a mode is one function here (or anywhere, registered with `@SEARCH_MODES.register("name")`): the
service offers it on every index that has the sources its plan names, requests may ask for it, and
`serve.mode` accepts it as the default.

Shortlist source names of an index artifact: `size_<m>` for the FAISS index on prefix m, `adanns` for the
AdANNS cells.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from mrl.configio import check, positive
from mrl.registry import Registry
from mrl.retrieval.plan import PlanError, QueryPlan, Rerank, Shortlist, check_plan, check_stages, stage_codes

SEARCH_MODES: Registry = Registry("search mode")
FunnelStage = tuple[int | None, int] | tuple[int | None, int, Literal["binary", "int8", "float"]]
"""A funnel stage: [size, keep] or [size, keep, codes], size null = d."""
ADANNS_SOURCE = "adanns"


def index_source(size: int) -> str:
    """The artifact's name for its FAISS index on prefix `size`."""
    return f"size_{size}"


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """What the search modes read: the service's default (`serve.search`), which a request may override in part
    (a request's K clips the configured funnel's keeps into [k, K]). Each field is checked when built; the default
    funnel against the default shortlist by `ServeConfig`, and whether an index can run them by `check_settings`."""

    shortlist_size: int = 16
    """D_s: the prefix size whose index shortlists."""
    shortlist_k: int = 200
    """K: candidates shortlisted (never below k), reranked exactly with the rerank size."""
    rerank_size: int | None = None
    """D_r: the prefix size adaptive retrieval reranks with; None: the full d."""
    funnel: tuple[FunnelStage, ...] | None = None
    """Funnel rerank stages (size, keep) or (size, keep, codes) after the shortlist, size null = d, codes binary
    | int8 | float (default: exact, from the float vectors; binary and int8 need the index to keep those codes,
    `index.codes`); None: sizes double from 2 D_s to d
    while keeps halve from K/2 (never below k), e.g. 16/200 -> 32/100 -> 64/50 -> 128/25 -> 256/12 -> ... -> d/k."""
    nprobe: int | None = None
    """IVF cells / AdANNS cells probed per query; None: the index's own setting (AdANNS: 8)."""
    ef_search: int | None = None
    """HNSW search breadth; None: the index's own setting."""

    def __post_init__(self) -> None:
        positive("shortlist_size", self.shortlist_size)
        positive("shortlist_k", self.shortlist_k)
        positive("rerank_size", self.rerank_size, allow_none=True)
        positive("nprobe", self.nprobe, allow_none=True)
        positive("ef_search", self.ef_search, allow_none=True)
        check(self.funnel is None or len(self.funnel) > 0,
              "funnel must list at least one (size, keep) stage, or be null")


def make_plan(mode: str, settings: SearchSettings, dim: int, k: int) -> QueryPlan:
    """The plan of `mode` for these settings, vectors of size d and k results."""
    return SEARCH_MODES.get(mode)(settings, dim, k)


def default_funnel(shortlist_size: int, shortlist_k: int, dim: int, k: int) -> list[tuple[int, int]]:
    """Rerank stages after a (shortlist_size, shortlist_k) shortlist: sizes double up to d, keeps halve to k.

    E.g. (16, 200, d=2048, k=10): 32/100, 64/50, 128/25, 256/12, 512/10, 1024/10, 2048/10.
    """
    stages, size, keep = [], 2 * shortlist_size, shortlist_k
    while size < dim:
        keep = max(k, keep // 2)
        stages.append((size, keep))
        size *= 2
    stages.append((dim, k))
    return stages


def funnel_stages(settings: SearchSettings, dim: int, k: int) -> tuple[Rerank, ...]:
    """The funnel's rerank stages for k results: configured or default, keeps within [k, K]."""
    shortlist_k = max(k, settings.shortlist_k)
    if settings.funnel is None:
        stages = default_funnel(settings.shortlist_size, shortlist_k, dim, k)
    else:
        stages = [(st[0] or dim, min(shortlist_k, max(k, st[1])), stage_codes(st)) for st in settings.funnel]
    return tuple(Rerank(*st) for st in stages)


def _index_shortlist(settings: SearchSettings, size: int, k: int) -> Shortlist:
    return Shortlist(source=index_source(size), k=k, nprobe=settings.nprobe, ef_search=settings.ef_search)


@SEARCH_MODES.register("adaptive")
def adaptive(settings: SearchSettings, dim: int, k: int) -> QueryPlan:
    """MRL adaptive retrieval: shortlist K with the D_s-prefix index, rerank exactly at D_r (default d)."""
    return QueryPlan(mode="adaptive", k=k,
                     shortlist=_index_shortlist(settings, settings.shortlist_size, max(k, settings.shortlist_k)),
                     reranks=(Rerank(settings.rerank_size or dim, k),))


@SEARCH_MODES.register("funnel")
def funnel(settings: SearchSettings, dim: int, k: int) -> QueryPlan:
    """The same shortlist, then exact reranks through growing prefixes and shrinking shortlists."""
    return QueryPlan(mode="funnel", k=k,
                     shortlist=_index_shortlist(settings, settings.shortlist_size, max(k, settings.shortlist_k)),
                     reranks=funnel_stages(settings, dim, k))


@SEARCH_MODES.register("adanns")
def adanns(settings: SearchSettings, dim: int, k: int) -> QueryPlan:
    """The members of the query's nearest AdANNS cells, scored with D_s (keeping K), then the funnel."""
    later = tuple(st for st in funnel_stages(settings, dim, k) if st.size > settings.shortlist_size)
    first = Rerank(settings.shortlist_size, max(k, settings.shortlist_k) if later else k)  # D_s = d: one stage
    return QueryPlan(mode="adanns", k=k, shortlist=Shortlist(source=ADANNS_SOURCE, nprobe=settings.nprobe),
                     reranks=(first, *later))


@SEARCH_MODES.register("full")
def full(settings: SearchSettings, dim: int, k: int) -> QueryPlan:
    """One search of the size-d index (exact when the index kind is flat)."""
    return QueryPlan(mode="full", k=k, shortlist=_index_shortlist(settings, dim, k))


def available_modes(settings: SearchSettings, sources: Mapping[str, int], dim: int, k: int,
                    codes: Collection[tuple[str, int]] = ()) -> list[str]:
    """The registered modes whose plans an index with these shortlist `sources` (name -> size) and code stores
    (`codes`, (kind, size) pairs) can run."""
    out = []
    for name in SEARCH_MODES:
        try:
            check_plan(make_plan(name, settings, dim, k), sources, dim, codes)
        except PlanError:
            continue
        out.append(name)
    return out


def check_settings(settings: SearchSettings, mode: str, sources: Mapping[str, int], dim: int, k: int,
                   codes: Collection[tuple[str, int]] = ()) -> list[str]:
    """The rules between the service's search settings and an index (its shortlist `sources` and d): sizes
    within d, and the default `mode` runnable. The service checks them at start against the loaded index; the
    pipeline checks them before any work against the index it is about to build.

    Returns:
        The modes available on that index.

    Raises:
        PlanError: naming the setting and what the index has.
    """
    if (settings.rerank_size or dim) > dim:
        raise PlanError(f"serve.search.rerank_size {settings.rerank_size} is above d={dim}")
    too_big = [m for m, *_ in settings.funnel or () if m is not None and m > dim]
    if too_big:
        raise PlanError(f"serve.search.funnel sizes {too_big} are above d={dim}")
    if settings.funnel is not None:  # null = d, now that d is known: e.g. [[64, 20], [null, 10]] at d = 64 repeats 64
        try:
            check_stages([(m or dim, *rest) for m, *rest in settings.funnel], after_size=settings.shortlist_size)
        except PlanError as exc:
            raise PlanError(f"serve.search.funnel at d={dim}: {exc}") from None
    available = available_modes(settings, sources, dim, k, codes)
    plan = None
    try:
        plan = make_plan(mode, settings, dim, k)
        check_plan(plan, sources, dim, codes)
    except ValueError as exc:  # an unknown mode, a plan that cannot be made, or one the index cannot run
        if plan is None:
            raise PlanError(f"serve.mode {mode!r}: {exc}") from None
        missing = plan.shortlist.source if plan.shortlist.source not in sources else None
        hint = ("; set index.adanns_size to build AdANNS cells" if missing == ADANNS_SOURCE else
                f"; index.sizes must include {sources_size(missing)}" if missing else "")
        raise PlanError(f"serve.mode {mode!r} cannot run on this index: {exc}{hint}. Modes it can serve: "
                        f"{available}") from None
    return available


def sources_size(source: str) -> str:
    """The prefix size named by an artifact's index source name (`size_16` -> "16")."""
    return source.removeprefix("size_")
