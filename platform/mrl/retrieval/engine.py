"""The search executor: runs a `QueryPlan` over a batch of queries.

`SearchEngine` holds the rerank store (full-size vectors, in memory or memory-mapped from the index's file),
named shortlist sources (FAISS indexes on a prefix, float or binary, AdANNS cells) and compact code stores
(`mrl.retrieval.codes.CodeStore`, binary or int8 codes of a prefix, for code rerank stages). `run(plan,
queries)` shortlists, then reranks stage by stage; nothing else in the platform orchestrates staged search
(the library-only `mrl.retrieval.sharded` merges whole-index searches): the service, the evaluation stage, the
benchmark and the CLI all build plans and call `run`, so the benchmark times exactly what the service runs.

Every run also reports the multiply-adds per query (FAISS's own counters for graph and IVF indexes; a Hamming
distance on m bits counts as m / 64 operations, one XOR and popcount per 64-bit word), the bytes it read
from the full vectors per query (the float stages' candidate prefixes: file reads when the vectors are
memory-mapped) and, when asked, the seconds each stage took.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mrl.retrieval.adanns import DEFAULT_NPROBE
from mrl.retrieval.codes import CodeStore
from mrl.retrieval.indexes import BINARY_KINDS, faiss_search, index_bytes, is_binary, search_params, to_device
from mrl.retrieval.plan import QueryPlan, Shortlist, check_plan
from mrl.retrieval.store import PrefixStore, as_store, rerank
from mrl.retrieval.topk import normalize_prefix


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
    """A FAISS index built on the normalised prefix `size` (any kind of `mrl.retrieval.indexes`).

    Args:
        index: the CPU index as built or read.
        size: the prefix it was built on.
        kind: its index kind (default: read off the index).
        device: cpu | gpu | auto: flat and IVF indexes move to faiss-gpu's GPUs (see `to_device`).
    """

    def __init__(self, index, size: int, kind: str | None = None, device: str = "cpu"):
        self.size = size
        self.kind = kind or _kind_of(index)
        self.label = f"{self.kind}@{size}"
        # what the multiply-add count needs, read off the CPU index (a multi-GPU replica has no such fields)
        self._nlist = getattr(index, "nlist", 0)
        self._per_code = index.pq.M if self.kind == "ivfpq" else size / 64 if self.kind in BINARY_KINDS else size
        self.index = to_device(index, device)
        self.on_gpu = self.index is not index

    def candidates(self, queries: np.ndarray, spec: Shortlist) -> Candidates:
        import faiss

        if spec.k is None:
            raise ValueError(f"shortlist source {spec.source!r} is a FAISS index: the plan must give its k")
        if spec.nprobe is not None and self._nlist and search_params(self.index, nprobe=spec.nprobe) is None:
            # an IVF index replicated over several GPUs takes no per-call parameters, and setting nprobe on the
            # shared index would leak into concurrent and later searches
            raise ValueError(f"{type(self.index).__name__} takes no per-search nprobe; build the index with the "
                             "nprobe you want (index.nprobe) or search it on one GPU")
        q = max(1, len(queries))
        faiss.cvar.hnsw_stats.reset()
        faiss.cvar.indexIVF_stats.reset()
        scores, positions = faiss_search(self.index, queries, self.size, spec.k, spec.nprobe, spec.ef_search)
        if self.kind in ("hnsw", "binary_hnsw"):
            madds = faiss.cvar.hnsw_stats.ndis / q * self._per_code
        elif self.kind in ("ivf", "ivfpq", "binary_ivf"):  # (faiss-gpu does not update these: GPU counts are low)
            madds = self._nlist * self._per_code + faiss.cvar.indexIVF_stats.ndis / q * self._per_code
        else:
            madds = float(self.index.ntotal * self._per_code)
        return Candidates(positions, madds, positions.shape[1], scores)


class CellSource:
    """AdANNS cells (`mrl.retrieval.adanns.AdannsIVF`): the members of the `nprobe` nearest cells.

    Given the database `vectors`, the source also ranks the members itself (`ranked`): FAISS IVF lists of the
    members' prefixes at the plan's first rerank size (built on first use, or up front for `list_sizes`),
    searched with preassigned cells, so FAISS's kernels score the members. The engine runs a plan's first
    rerank that way; without vectors it gathers the members and reranks them itself.
    """

    def __init__(self, cells, vectors: np.ndarray | None = None, list_sizes: tuple[int, ...] = ()):
        self.cells, self.size = cells, cells.cluster_size
        self.label = f"adanns@{self.size}"
        self.on_gpu = False
        self.vectors = vectors
        self._quantizer = cells.faiss_quantizer() if vectors is not None else None
        self._lists: dict[int, object] = {}
        for size in list_sizes:
            self.lists(size)

    def candidates(self, queries: np.ndarray, spec: Shortlist) -> Candidates:
        positions = self.cells.candidates(queries, spec.nprobe)
        width = float((positions >= 0).sum()) / max(1, len(queries))
        return Candidates(positions, float(self.cells.nlist * self.size), width)

    @property
    def can_rank(self) -> bool:
        return self.vectors is not None

    def nbytes(self) -> int:
        """Bytes held: the cells (centres, CSR members) and the FAISS lists built so far."""
        cells = self.cells
        held = cells.centroids.nbytes + cells.offsets.nbytes + cells.members.nbytes
        return held + sum(index_bytes(lists) for lists in self._lists.values())

    def lists(self, size: int):
        """The FAISS IVF of the members' `size`-prefixes (built once per size)."""
        if size not in self._lists:
            self._lists[size] = self.cells.faiss_lists(self.vectors, size)
        return self._lists[size]

    def ranked(self, queries: np.ndarray, spec: Shortlist, size: int, keep: int) -> Candidates:
        """The best `keep` members of the probed cells by cosine at prefix `size`, best first."""
        import faiss

        ivf = self.lists(size)
        nprobe = max(1, min(spec.nprobe or DEFAULT_NPROBE, self.cells.nlist))
        q = len(queries)
        coarse_d, coarse_i = self._quantizer.search(normalize_prefix(queries, self.size), nprobe)
        unit = normalize_prefix(queries, size)
        scores = np.empty((q, keep), dtype=np.float32)
        positions = np.empty((q, keep), dtype=np.int64)
        faiss.cvar.indexIVF_stats.reset()
        ivf.search_preassigned_c(q, faiss.swig_ptr(unit), keep, faiss.swig_ptr(coarse_i), faiss.swig_ptr(coarse_d),
                                 faiss.swig_ptr(scores), faiss.swig_ptr(positions), False,
                                 faiss.SearchParametersIVF(nprobe=nprobe))
        madds = self.cells.nlist * self.size + faiss.cvar.indexIVF_stats.ndis / max(1, q) * size
        scores = np.where(positions >= 0, scores, -np.inf).astype(np.float32)
        return Candidates(positions, madds, keep, scores)


def source_bytes(source) -> int | None:
    """Bytes a shortlist source holds in the process's memory (None for an index on a GPU, not measured here)."""
    if isinstance(source, CellSource):
        return source.nbytes()
    return None if getattr(source, "on_gpu", False) else index_bytes(source.index)


def _kind_of(index) -> str:
    import faiss

    if is_binary(index):
        for cls, kind in ((faiss.IndexBinaryHNSW, "binary_hnsw"), (faiss.IndexBinaryIVF, "binary_ivf")):
            if isinstance(index, cls):
                return kind
        return "binary_flat"
    for cls, kind in ((faiss.IndexHNSW, "hnsw"), (faiss.IndexIVFPQ, "ivfpq"), (faiss.IndexIVF, "ivf")):
        if isinstance(index, cls):
            return kind
    return "flat"


@dataclass
class SearchResult:
    """What a plan returned for a batch of Q queries.

    Attributes:
        scores, positions: (Q, k) best first; empty slots have position -1 (after a rerank their score is -inf;
            a plan without rerank returns FAISS's own filler score).
        shortlist: (Q, L) the first stage's candidates (for recall measurements).
        madds: multiply-adds per query.
        vector_bytes: bytes of the full vectors the float rerank stages read per query (candidates x prefix x
            item size; the page cache or disk serves them when the vectors are memory-mapped).
        stages: (label, seconds) per stage when profiled, else empty.
    """

    scores: np.ndarray
    positions: np.ndarray
    shortlist: np.ndarray
    madds: float
    vector_bytes: float = 0.0
    stages: list[tuple[str, float]] = field(default_factory=list)


class SearchEngine:
    """Shortlist sources plus the rerank store; runs query plans.

    Args:
        store: the full-size vectors (a `PrefixStore`, or an (N, d) array to wrap in one).
        sources: shortlist source name -> source (`FaissSource`, `CellSource`, or any `ShortlistSource`).
        codes: compact code stores for code rerank stages (each found by its kind and size).
    """

    def __init__(self, store, sources: Mapping[str, ShortlistSource] | None = None,
                 codes: list[CodeStore] | tuple[CodeStore, ...] = ()):
        self.store: PrefixStore = as_store(store)
        self.sources: dict[str, ShortlistSource] = dict(sources or {})
        self.codes: dict[tuple[str, int], CodeStore] = {(c.kind, c.size): c for c in codes}

    @property
    def dim(self) -> int:
        return self.store.dim

    def __len__(self) -> int:
        return len(self.store)

    def source_sizes(self) -> dict[str, int]:
        """Source name -> the prefix size it reads (what `check_plan` needs)."""
        return {name: src.size for name, src in self.sources.items()}

    def code_keys(self) -> list[tuple[str, int]]:
        """(kind, size) of every code store (what `check_plan` needs)."""
        return sorted(self.codes)

    def check(self, plan: QueryPlan) -> None:
        """Raise `PlanError` unless this engine can run `plan` (see `mrl.retrieval.plan.check_plan`)."""
        check_plan(plan, self.source_sizes(), self.dim, self.code_keys())

    def resident_bytes(self, plan: QueryPlan | None = None) -> int:
        """Bytes of the structures a deployment keeps in memory: the shortlist sources (FAISS index data, AdANNS
        cells), the code stores, and the full vectors unless they are memory-mapped from a file (then they are
        file pages the kernel may drop and read back, not the process's own memory). With `plan`, only what the
        plan reads. An index on a GPU counts 0 here."""
        names = [plan.shortlist.source] if plan is not None else list(self.sources)
        held = 0
        for name in names:
            held += source_bytes(self.sources[name]) or 0
        keys = plan.code_stages() if plan is not None else list(self.codes)
        held += sum(self.codes[key].nbytes for key in keys)
        reads_vectors = plan is None or any(r.codes == "float" for r in plan.reranks)
        if reads_vectors and not self.store.mapped:
            held += self.store.vectors.nbytes
        return held

    @property
    def on_gpu(self) -> bool:
        """Whether any part runs on a GPU (FAISS GPU indexes must not be searched from two threads at once)."""
        return self.store.device.type != "cpu" or any(getattr(s, "on_gpu", False) for s in self.sources.values())

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
        reranks = plan.reranks
        t0 = time.perf_counter()
        if plan.shortlist.k is None and reranks and reranks[0].codes == "float" and getattr(source, "can_rank", False):
            # a candidate set the source can score itself at the first rerank's size (AdANNS lists in FAISS)
            found = source.ranked(queries, plan.shortlist, reranks[0].size, reranks[0].keep)
            label, reranks = f"{source.label}->{reranks[0].size}", reranks[1:]
        else:
            found, label = source.candidates(queries, plan.shortlist), source.label
        if profile:
            stages.append((label, time.perf_counter() - t0))
        scores, positions, kept, madds = found.scores, found.positions, found.width, found.madds
        read = 0.0
        for i, stage in enumerate(reranks):
            t0 = time.perf_counter()
            last = i == len(reranks) - 1
            if stage.codes == "float":
                madds += kept * stage.size
                read += kept * stage.size * self.store.vectors.itemsize
                scores, positions = rerank(positions, self.store, queries, stage.size, stage.keep, sort=last)
            else:
                madds += kept * (stage.size / 64 if stage.codes == "binary" else stage.size)
                scores, positions = self.codes[(stage.codes, stage.size)].rerank(positions, queries, stage.keep,
                                                                               sort=last)
            kept = stage.keep
            if profile:
                stages.append((stage.label, time.perf_counter() - t0))
        return SearchResult(scores[:, :plan.k], positions[:, :plan.k], found.positions, madds, read, stages)

