"""The retrieval benchmark: search configurations side by side against exact full-size search, in one run.

A benchmark config (YAML, `RetrievalBenchConfig`) names indexes and search configurations. Indexes are built
in the order listed, each just before the searches that use it, and freed after them, so a 1M x 2048 run never
holds two full-size float32 indexes at once. The first search is the reference: exact full-size search, whose
top-k every other configuration's shortlist and results are compared with.

Every search is a `QueryPlan` run by `SearchEngine.run`, the code path the service runs: the index returns a
shortlist of K candidates at its prefix size (or the members of the probed cells, for an AdANNS index), then
each `rerank` stage rescores the survivors exactly at a larger prefix and keeps fewer. Exact search has no
rerank stage; adaptive retrieval has one (D_r = d); the funnel has several. Tables and plots are written by
`mrl.experiments.retrieval_report`.

Measured per search: 1-NN accuracy (top-1), mAP@k, P@k, recall of the exact top-k within the shortlist and
within the results, queries/second over the whole query batch (median of `repeats`), median latency of
single queries, multiply-adds per query (counted by FAISS for graph and IVF indexes), and the process's peak
resident memory while the index was built and searched.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mrl.config import ConfigError, JobConfig, _check, _positive
from mrl.retrieval.indexes import IndexParams
from mrl.retrieval.plan import PlanError, QueryPlan, Rerank, Shortlist, check_stages

log = logging.getLogger("mrl.bench")


@dataclass(frozen=True, kw_only=True)
class BenchIndex:
    """One index over one prefix size of the database."""

    kind: str = "flat"
    """A FAISS index kind of `mrl.retrieval.indexes.INDEX_KINDS` (flat | hnsw | ivf | ivfpq), or adanns: cells
    on this prefix, members scored on the next stage's."""
    size: int | None = None
    """Prefix size the index is built on; None: the full d."""
    hnsw_m: int = 32
    ef_construction: int = 40
    nlist: int = 1024
    pq_m: int = 16

    def __post_init__(self) -> None:
        from mrl.retrieval.indexes import INDEX_KINDS

        kinds = [*INDEX_KINDS, "adanns"]
        _check(self.kind in kinds, f"kind {self.kind!r} is not accepted; choose one of {kinds}")
        _positive("size", self.size, allow_none=True)
        for name in ("hnsw_m", "ef_construction", "nlist", "pq_m"):
            _positive(name, getattr(self, name))

    def params(self, seed: int) -> IndexParams:
        return IndexParams(hnsw_m=self.hnsw_m, ef_construction=self.ef_construction, nlist=self.nlist,
                           pq_m=self.pq_m, seed=seed)


@dataclass(frozen=True, kw_only=True)
class BenchSearch:
    """One search configuration: an index's shortlist, then exact rerank stages."""

    name: str
    index: str
    """Key into `indexes`."""
    shortlist: int = 10
    """K: candidates taken from the index (ignored by adanns, whose candidates are the probed cells' members)."""
    rerank: tuple[tuple[int | None, int], ...] = ()
    """(size, keep) stages, size None = full d; sizes increasing, keeps not growing."""
    ef_search: int | None = None
    """HNSW search breadth; None: the index's own setting."""
    nprobe: int | None = None
    """IVF cells probed; None: the index's own setting (AdANNS: mrl.retrieval.adanns.DEFAULT_NPROBE)."""
    repeats: int = 3
    """Timed passes over the whole query batch; the median is reported."""
    single: int = 100
    """Queries timed one at a time (0: skip)."""

    def __post_init__(self) -> None:
        _check(bool(self.name), "name must not be empty")
        _positive("shortlist", self.shortlist)
        _positive("ef_search", self.ef_search, allow_none=True)
        _positive("nprobe", self.nprobe, allow_none=True)
        _positive("repeats", self.repeats)
        _check(self.single >= 0, f"single must be >= 0, got {self.single}")
        try:
            check_stages(self.rerank)
        except PlanError as exc:
            raise ConfigError(str(exc)) from None

    def plan(self, cells: bool, dim: int, k: int) -> QueryPlan:
        """The query plan this configuration runs on vectors of size d: the index `self.index` shortlists
        (`cells`: an AdANNS index, whose candidates are its probed cells' members), then the reranks."""
        return QueryPlan(mode=self.name, k=k,
                         shortlist=Shortlist(source=self.index, k=None if cells else self.shortlist,
                                             nprobe=self.nprobe, ef_search=self.ef_search),
                         reranks=tuple(Rerank(m or dim, keep) for m, keep in self.rerank))


@dataclass(frozen=True, kw_only=True)
class RetrievalBenchConfig(JobConfig):
    """benchmarks/retrieval.py (output_dir holds the MLflow store the results are logged to)"""

    embeddings: str = "outputs/embeddings/latest"
    """An embed run directory: database = its train split, queries = its test split."""
    queries: int | None = None
    """Use this many test rows as queries (a seeded sample); None: all."""
    k: int = 10
    threads: int | None = None
    """FAISS and PyTorch threads; None: all cores."""
    vector_dtype: Literal["float32", "float16"] = "float32"
    """How the database is held in memory for reranking."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """auto: flat and IVF indexes and the rerank store on the GPU when faiss-gpu and CUDA see one, else CPU."""
    seed: int = 0
    title: str = "Retrieval"
    results: str = "docs/results/retrieval"
    """Output stem: <results>.md, .json and _pareto.png."""
    indexes: dict[str, BenchIndex] = field(default_factory=dict)
    searches: tuple[BenchSearch, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("queries", self.queries, allow_none=True)
        _positive("k", self.k)
        _positive("threads", self.threads, allow_none=True)
        _check(len(self.searches) > 0, "searches must list at least one configuration")
        for i, s in enumerate(self.searches):
            _check(s.index in self.indexes, f"searches[{i}].index {s.index!r} is not one of {sorted(self.indexes)}")
            try:  # the plan's own shape rules (keeps vs k and K, a rerank after AdANNS cells), d not known yet
                s.plan(self.indexes[s.index].kind == "adanns", dim=2**31, k=self.k)
            except PlanError as exc:
                raise ConfigError(f"searches[{i}] ({s.name}): {exc}") from None
        first = self.searches[0]
        _check(self.indexes[first.index].kind == "flat" and self.indexes[first.index].size is None
               and not first.rerank,
               "searches[0] must be the reference: exact full-size search (a flat index with size null, no rerank)")
        _check(len({s.name for s in self.searches}) == len(self.searches), "search names must be unique")


# ------------------------------------------------------------------------------------------ the run


def build_source(spec: BenchIndex, store, dim: int, seed: int, device: str = "cpu", list_sizes: tuple[int, ...] = ()):
    """Build one benchmark index over the store's vectors as a shortlist source (moved to the GPU when `device`
    asks for it; AdANNS cells with FAISS lists at `list_sizes`, the first rerank sizes of its searches);
    returns (source, build seconds)."""
    from mrl.retrieval.adanns import AdannsIVF
    from mrl.retrieval.engine import CellSource, FaissSource
    from mrl.retrieval.indexes import build_prefix_index

    size = spec.size or dim
    t0 = time.perf_counter()
    if spec.kind == "adanns":
        cells = AdannsIVF.build(store.vectors, cluster_size=size, nlist=spec.nlist, seed=seed)
        source = CellSource(cells, store.vectors, list_sizes)
    else:
        index = build_prefix_index(store.vectors, size, spec.kind, spec.params(seed))
        source = FaissSource(index, size, spec.kind, device)
    return source, time.perf_counter() - t0


def check_against(cfg: RetrievalBenchConfig, dim: int) -> None:
    """The rules between the benchmark's indexes and searches and vectors of size d (the same functions the
    build stage and the service call), before any data is read.

    Raises:
        ConfigError: naming the index or search and the rule.
    """
    from mrl.retrieval.indexes import check_index, check_prefix_size
    from mrl.retrieval.plan import check_plan

    sources = {}
    for name, spec in cfg.indexes.items():
        size = spec.size or dim
        try:
            if spec.kind == "adanns":
                check_prefix_size("AdANNS cell size", size, dim)
            else:
                check_index(spec.kind, size, dim, spec.params(cfg.seed))
        except ValueError as exc:
            raise ConfigError(f"indexes.{name}: {exc}") from None
        sources[name] = size
    for s in cfg.searches:
        try:
            check_plan(s.plan(cfg.indexes[s.index].kind == "adanns", dim, cfg.k), sources, dim)
        except PlanError as exc:
            raise ConfigError(f"search {s.name!r}: {exc}") from None


def load_data(cfg: RetrievalBenchConfig):
    """Database store, database labels, queries, query labels, d, manifest."""
    from mrl.artifacts.embeddings import read_embeddings
    from mrl.artifacts.manifest import read_manifest
    from mrl.retrieval.store import PrefixStore, torch_device

    emb = Path(cfg.embeddings).resolve()
    manifest = read_manifest(emb, stage="embed")
    check_against(cfg, manifest["dim"])
    _, db_labels, db = read_embeddings(emb / "train", cfg.vector_dtype)
    _, q_labels, queries = read_embeddings(emb / "test")
    if cfg.queries is not None and cfg.queries < len(queries):
        pick = np.sort(np.random.default_rng(cfg.seed).permutation(len(queries))[:cfg.queries])
        queries, q_labels = queries[pick], q_labels[pick]
    dim = db.shape[1]
    store = PrefixStore(db, device=torch_device(cfg.device))
    log.info("database %d x %d %s, %d queries", len(db), dim, db.dtype, len(queries))
    return store, db_labels, queries, q_labels, dim, manifest


def run_benchmark(cfg: RetrievalBenchConfig) -> dict[str, Any]:
    """Build, search and measure every configuration; returns the rows and run facts (no files written).

    Every search is a `QueryPlan` run by the same `SearchEngine.run` the service calls.
    """
    import faiss
    import torch

    from mrl.core.metrics import retrieval_metrics
    from mrl.experiments.measure import machine_description, peak_rss_bytes, recall_of, reset_peak_rss, time_search
    from mrl.retrieval.engine import SearchEngine

    threads = cfg.threads or os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    reset_peak_rss()
    store, db_labels, queries, q_labels, dim, manifest = load_data(cfg)
    load_peak = peak_rss_bytes()
    k = cfg.k
    rows: list[dict[str, Any]] = []
    reference = None
    order = list(dict.fromkeys(s.index for s in cfg.searches))  # indexes in first-use order
    for name in order:
        reset_peak_rss()
        spec = cfg.indexes[name]
        first_sizes = tuple({s.rerank[0][0] or dim for s in cfg.searches if s.index == name and s.rerank})
        source, build_seconds = build_source(spec, store, dim, cfg.seed, cfg.device,
                                             first_sizes if spec.kind == "adanns" else ())
        engine = SearchEngine(store, {name: source})
        log.info("index %s (%s) built in %.1fs", name, source.label, build_seconds)
        for search in (s for s in cfg.searches if s.index == name):
            plan = search.plan(spec.kind == "adanns", dim, k)
            found = engine.run(plan, queries, profile=True)  # the first (untimed-for-q/s) pass doubles as the profile
            positions = found.positions
            if reference is None:
                reference = positions
            batch_s, single_s, _ = time_search(lambda x, p=plan, e=engine: e.run(p, x), queries, search.repeats,
                                               search.single, threads)
            retrieved = np.where(positions >= 0, db_labels[np.maximum(positions, 0)], -1)
            metrics = retrieval_metrics(retrieved, q_labels, db_labels, k)
            rows.append({
                "config": search.name, "index": name, "index_kind": spec.kind, "index_size": source.size,
                "shortlist": int(found.shortlist.shape[1]), "rerank": [[r.size, r.keep] for r in plan.reranks],
                "ef_search": search.ef_search, "nprobe": search.nprobe,
                "top1": metrics["nn1"], "map": metrics[f"map@{k}"], "precision": metrics[f"precision@{k}"],
                "shortlist_recall": recall_of(reference, found.shortlist),
                "result_recall": recall_of(reference, positions),
                "qps": len(queries) / batch_s, "batch_seconds": batch_s, "queries": len(queries),
                "single_ms": None if single_s is None else 1000 * single_s, "madds_per_query": found.madds,
                "build_seconds": build_seconds, "peak_rss_gib": (peak_rss_bytes() or 0) / 2**30,
                "stage_ms": [[stage, 1000 * sec] for stage, sec in found.stages],
            })
            r = rows[-1]
            log.info("%s: top-1 %.2f mAP@%d %.2f, %.0f q/s, single %s ms, %.3g mult-adds/query", search.name,
                     100 * r["top1"], k, 100 * r["map"], r["qps"],
                     "-" if r["single_ms"] is None else f"{r['single_ms']:.2f}", found.madds)
        del engine, source
    return {"rows": rows, "k": k, "dim": dim, "rows_database": len(store), "queries": len(queries),
            "dtype": str(store.vectors.dtype), "threads": threads, "machine": machine_description(threads),
            "load_peak_rss_gib": (load_peak or 0) / 2**30, "seconds": time.perf_counter() - started,
            "model_uri": manifest.get("model_uri"), "augment": manifest.get("augment"),
            "embeddings": str(Path(cfg.embeddings).resolve())}
