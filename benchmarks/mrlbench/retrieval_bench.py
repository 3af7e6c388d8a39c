"""The retrieval benchmark: search configurations side by side against exact full-size search, in one run.

A benchmark config (YAML, `RetrievalBenchConfig`) names indexes and search configurations. Indexes are built
in the order listed, each just before the searches that use it, and freed after them, so a 1M x 2048 run never
holds two full-size float32 indexes at once. The first search is the reference: exact full-size search, whose
top-k every other configuration's shortlist and results are compared with.

Every search is a `QueryPlan` run by `SearchEngine.run`, the code path the service runs: the index returns a
shortlist of K candidates at its prefix size (or the members of the probed cells, for an AdANNS index), then
each `rerank` stage rescores the survivors exactly at a larger prefix and keeps fewer. Exact search has no
rerank stage; adaptive retrieval has one (D_r = d); the funnel has several. Tables and plots are written by
`mrlbench.retrieval_report`.

Measured per search: 1-NN accuracy (top-1), mAP@k, P@k, recall of the exact top-k within the shortlist and
within the results (recall@k, the ann-benchmarks measure), queries/second over the whole query batch (median
of `repeats`), median latency of single queries, multiply-adds per query (counted by FAISS for graph and IVF
indexes), the process's peak resident memory while the index was built and searched, the bytes per row a
deployment keeps resident (`SearchEngine.resident_bytes`: its index, its code stores, and the full vectors
only when they are held in memory rather than memory-mapped, `vectors: mmap`), and the bytes of full vectors
its float reranks read per query.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mrl.artifacts.embeddings import read_embeddings
from mrl.artifacts.manifest import read_manifest
from mrl.config import ConfigError, JobConfig
from mrl.configio import check, positive
from mrl.retrieval import kernels
from mrl.retrieval.adanns import AdannsIVF
from mrl.retrieval.engine import CellSource, FaissSource, SearchEngine, source_bytes
from mrl.retrieval.indexes import (
    INDEX_KINDS,
    IndexParams,
    build_prefix_index,
    check_index,
    check_prefix_size,
)
from mrl.retrieval.modes import FunnelStage, index_source
from mrl.retrieval.codes import CodeStore
from mrl.retrieval.plan import PlanError, QueryPlan, Rerank, Shortlist, check_plan, check_stages, stage_codes
from mrl.retrieval.quality import exact_engine, exact_plan, label_metrics
from mrl.retrieval.store import PAGE_BYTES, PrefixStore, save_page_aligned, torch_device
from mrl.runtime import peak_rss_bytes, reset_peak_rss
from mrlbench.measure import machine_description, recall_of, time_search

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
    storage: Literal["float32", "float16", "int8", "int4"] = "float32"
    """How an HNSW graph or an IVF's lists hold their vectors."""
    nlist: int = 1024
    train_per_cell: int = 256
    """IVF k-means sample per cell."""
    kmeans_iters: int = 25
    pq_m: int = 16

    def __post_init__(self) -> None:
        kinds = [*INDEX_KINDS, "adanns"]
        check(self.kind in kinds, f"kind {self.kind!r} is not accepted; choose one of {kinds}")
        positive("size", self.size, allow_none=True)
        for name in ("hnsw_m", "ef_construction", "nlist", "pq_m", "train_per_cell", "kmeans_iters"):
            positive(name, getattr(self, name))

    def params(self, seed: int) -> IndexParams:
        return IndexParams(hnsw_m=self.hnsw_m, ef_construction=self.ef_construction, storage=self.storage,
                           nlist=self.nlist, train_per_cell=self.train_per_cell, kmeans_iters=self.kmeans_iters,
                           pq_m=self.pq_m, seed=seed)


@dataclass(frozen=True, kw_only=True)
class BenchSearch:
    """One search configuration: an index's shortlist, then exact rerank stages."""

    name: str
    index: str
    """Key into `indexes`."""
    shortlist: int = 10
    """K: candidates taken from the index (ignored by adanns, whose candidates are the probed cells' members)."""
    rerank: tuple[FunnelStage, ...] = ()
    """(size, keep) or (size, keep, codes) stages, size None = full d, codes binary | int8 | float (default);
    sizes increasing (a repeated size only with finer codes), keeps not growing."""
    ef_search: int | None = None
    """HNSW search breadth; None: the index's own setting."""
    nprobe: int | None = None
    """IVF cells probed; None: the index's own setting (AdANNS: mrl.retrieval.adanns.DEFAULT_NPROBE)."""
    repeats: int = 3
    """Timed passes over the whole query batch; the median is reported."""
    single: int = 100
    """Queries timed one at a time (0: skip)."""
    family: str | None = None
    """Searches of one family compete on the held-out tuning queries: the fastest whose mAP@k there is within
    `map_gap` of exact search's is the family's pick (None: not tuned)."""

    def __post_init__(self) -> None:
        check(bool(self.name), "name must not be empty")
        positive("shortlist", self.shortlist)
        positive("ef_search", self.ef_search, allow_none=True)
        positive("nprobe", self.nprobe, allow_none=True)
        positive("repeats", self.repeats)
        check(self.single >= 0, f"single must be >= 0, got {self.single}")
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
                         reranks=tuple(Rerank(st[0] or dim, st[1], stage_codes(st)) for st in self.rerank))


def deployment(search: BenchSearch, index: BenchIndex, dim: int, k: int) -> dict[str, Any] | None:
    """The pipeline settings that make the service run `search`: `index` (the build stage's config: the
    shortlist index, or the AdANNS cells) and `serve` (mode and search settings), as plain dicts for YAML.
    None for a search the service has no mode for (a prefix index's own ranking, without a rerank to d)."""
    size = index.size or dim
    if index.kind == "adanns":
        (first_size, first_keep, *_), *later = search.rerank
        idx = {"adanns_size": size, "adanns_nlist": index.nlist}
        serve = {"mode": "adanns", "shortlist_size": first_size or dim, "shortlist_k": first_keep,
                 "nprobe": search.nprobe, "funnel": [list(st) for st in later] or None}
    elif not search.rerank:
        if size != dim:
            return None
        idx = {"kind": index.kind, "sizes": [dim]}
        serve = {"mode": "full", "ef_search": search.ef_search, "nprobe": search.nprobe}
    else:
        idx = {"kind": index.kind, "sizes": [size]}
        serve = {"mode": "funnel", "shortlist_size": size, "shortlist_k": search.shortlist,
                 "ef_search": search.ef_search, "nprobe": search.nprobe, "funnel": [list(st) for st in search.rerank]}
    if index.kind in ("hnsw", "binary_hnsw"):
        idx.update({"hnsw_m": index.hnsw_m, "ef_construction": index.ef_construction})
    elif index.kind in ("ivf", "ivfpq", "binary_ivf"):
        idx.update({"nlist": index.nlist, "train_per_cell": index.train_per_cell, "kmeans_iters": index.kmeans_iters})
    if index.kind in ("hnsw", "ivf"):
        idx["storage"] = index.storage
    codes = [[st[0] or dim, stage_codes(st)] for st in search.rerank if stage_codes(st) != "float"]
    if codes:
        idx["codes"] = codes
    mode = serve.pop("mode")
    return {"index": idx, "serve": {"mode": mode, "default_k": k,
                                    "search": {key: value for key, value in serve.items() if value is not None}}}


@dataclass(frozen=True, kw_only=True)
class Targets:
    """Bars a family's pick must clear against the baseline family's pick (evaluation queries, same run). The
    family's pick must also reach the baseline pick's recall@k on the tuning queries (as it must on the
    evaluation ones), besides the mAP@k bar every family's pick meets there."""

    family: str
    """The family held to them."""
    resident: float = 0.125
    """Resident bytes per vector at most this times the baseline's."""
    qps: float = 1.0
    """Queries/second at least this times the baseline's."""
    single: float = 1.5
    """Median single-query latency at most this times the baseline's."""
    build: float = 0.125
    """Build seconds (index and codes) at most this times the baseline's."""

    def __post_init__(self) -> None:
        for name in ("resident", "qps", "single", "build"):
            positive(name, getattr(self, name))


@dataclass(frozen=True, kw_only=True)
class RetrievalBenchConfig(JobConfig):
    """benchmarks/retrieval.py (output_dir holds the MLflow store the results are logged to)"""

    embeddings: str = "outputs/embeddings/latest"
    """An embed run directory: database = its train split, queries = its test split."""
    queries: int | None = None
    """Use this many test rows as evaluation queries (a seeded sample); None: all (then no tuning queries)."""
    tune_queries: int | None = None
    """Held-out test rows (a seeded sample disjoint from the evaluation queries) every search also runs on, to
    choose each family's setting there; None: no tuning."""
    map_gap: float = 0.1
    """Points of mAP@k below exact search (on the tuning queries) a family's pick may lose."""
    baseline: str | None = None
    """The family every other family's pick is compared with (speed, latency, memory, build time)."""
    k: int = 10
    threads: int | None = None
    """FAISS and PyTorch threads; None: all cores."""
    vector_dtype: Literal["float32", "float16"] = "float32"
    """How the database is held for reranking."""
    vectors: Literal["memory", "mmap"] = "memory"
    """memory: the full vectors are read into the process's memory; mmap: written once to
    <output_dir>/vectors-<dtype>.npy and memory-mapped, as a service replica holds them (float reranks then read
    candidates from file pages, and the resident bytes per row count only indexes and codes)."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """auto: flat and IVF indexes and the rerank store on the GPU when faiss-gpu and CUDA see one, else CPU."""
    seed: int = 0
    title: str = "Retrieval"
    results: str = "docs/results/retrieval"
    """Output stem: <results>.md, .json and _pareto.png."""
    indexes: dict[str, BenchIndex] = field(default_factory=dict)
    searches: tuple[BenchSearch, ...] = ()
    targets: Targets | None = None
    """Targets one family's pick is held to against the baseline's (met / missed in the report); with mAP@k within
    `map_gap` of exact search and recall@k at least the baseline's on the evaluation queries."""

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("queries", self.queries, allow_none=True)
        positive("k", self.k)
        positive("threads", self.threads, allow_none=True)
        check(len(self.searches) > 0, "searches must list at least one configuration")
        for i, s in enumerate(self.searches):
            check(s.index in self.indexes, f"searches[{i}].index {s.index!r} is not one of {sorted(self.indexes)}")
            try:  # the plan's own shape rules (keeps vs k and K, a rerank after AdANNS cells), d not known yet
                s.plan(self.indexes[s.index].kind == "adanns", dim=2**31, k=self.k)
            except PlanError as exc:
                raise ConfigError(f"searches[{i}] ({s.name}): {exc}") from None
        first = self.searches[0]
        check(self.indexes[first.index].kind == "flat" and self.indexes[first.index].size is None
               and not first.rerank,
               "searches[0] must be the reference: exact full-size search (a flat index with size null, no rerank)")
        check(len({s.name for s in self.searches}) == len(self.searches), "search names must be unique")
        positive("tune_queries", self.tune_queries, allow_none=True)
        check(self.tune_queries is None or self.queries is not None,
               "tune_queries needs queries (the evaluation sample) set, so the two samples can be disjoint")
        check(0 <= self.map_gap <= 100, f"map_gap must be within [0, 100] points, got {self.map_gap}")
        families = {s.family for s in self.searches if s.family}
        check(self.baseline is None or self.baseline in families,
               f"baseline {self.baseline!r} is not the family of any search; families: {sorted(families)}")
        check(not families or self.tune_queries is not None, "search families are tuned: set tune_queries")
        check(self.targets is None or (self.targets.family in families and self.baseline is not None),
              f"targets.family must be a search family and needs a baseline; families: {sorted(families)}")


# ------------------------------------------------------------------------------------------ the run


def build_source(spec: BenchIndex, store, dim: int, seed: int, device: str = "cpu", list_sizes: tuple[int, ...] = ()):
    """Build one benchmark index over the store's vectors as a shortlist source (moved to the GPU when `device`
    asks for it; AdANNS cells with FAISS lists at `list_sizes`, the first rerank sizes of its searches);
    returns (source, build seconds)."""
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
            plan = s.plan(cfg.indexes[s.index].kind == "adanns", dim, cfg.k)
            check_plan(plan, sources, dim, plan.code_stages())
        except PlanError as exc:
            raise ConfigError(f"search {s.name!r}: {exc}") from None


def load_data(cfg: RetrievalBenchConfig):
    """Database store, database labels, query sets ("eval", and "tune" when asked: (queries, labels) each,
    disjoint seeded samples of the test split), d, manifest."""
    emb = Path(cfg.embeddings).resolve()
    manifest = read_manifest(emb, stage="embed")
    check_against(cfg, manifest["dim"])
    _, db_labels, db = read_embeddings(emb / "train", cfg.vector_dtype)
    if cfg.vectors == "mmap":
        db = mapped_copy(db, Path(cfg.output_dir).resolve() / f"vectors-{db.dtype.name}.npy")
    _, q_labels, test = read_embeddings(emb / "test")
    order = np.random.default_rng(cfg.seed).permutation(len(test))
    n_eval = len(test) if cfg.queries is None else min(cfg.queries, len(test))
    picks = {"eval": np.sort(order[:n_eval])}
    if cfg.tune_queries:
        picks["tune"] = np.sort(order[n_eval:n_eval + cfg.tune_queries])
        if len(picks["tune"]) == 0:
            raise ConfigError(f"tune_queries: the test split has {len(test)} rows, all of them evaluation queries")
    query_sets = {name: (test[pick], q_labels[pick]) for name, pick in picks.items()}
    dim = db.shape[1]
    store = PrefixStore(db, device=torch_device(cfg.device))
    log.info("database %d x %d %s, %d evaluation queries, %d tuning queries", len(db), dim, db.dtype, n_eval,
             len(picks.get("tune", ())))
    return store, db_labels, query_sets, dim, manifest


def mapped_copy(db: np.ndarray, path: Path) -> np.ndarray:
    """`db` written to `path` with page-aligned rows (once: an existing such file of the same shape and dtype is
    reused) and memory-mapped back; the in-memory array is freed by the caller dropping it."""
    if path.is_file():
        old = np.load(path, mmap_mode="r")
        if old.shape == db.shape and old.dtype == db.dtype and old.offset % PAGE_BYTES == 0:
            return old
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    save_page_aligned(tmp, db)
    tmp.rename(path)
    return np.load(path, mmap_mode="r")


def measure(engine, plan, queries, q_labels, db_labels, search: BenchSearch, k: int, threads: int,
            reference: np.ndarray | None, single: bool = True) -> dict[str, Any]:
    """Accuracy and speed of one plan on one query set (recalls against `reference`, the exact top-k)."""
    found = engine.run(plan, queries, profile=True)  # the first (untimed-for-q/s) pass doubles as the profile
    positions = found.positions
    reference = positions if reference is None else reference
    batch_s, single_s, _ = time_search(lambda x, p=plan, e=engine: e.run(p, x), queries, search.repeats,
                                       search.single if single else 0, threads)
    metrics = label_metrics(positions, q_labels, db_labels, k)
    return {"positions": positions, "top1": metrics["nn1"], "map": metrics[f"map@{k}"],
            "precision": metrics[f"precision@{k}"], "shortlist": int(found.shortlist.shape[1]),
            "shortlist_recall": recall_of(reference, found.shortlist), "result_recall": recall_of(reference, positions),
            "qps": len(queries) / batch_s, "batch_seconds": batch_s, "queries": len(queries),
            "vector_kib_per_query": found.vector_bytes / 1024,
            "single_ms": None if single_s is None else 1000 * single_s, "madds_per_query": found.madds,
            "stage_ms": [[stage, 1000 * sec] for stage, sec in found.stages]}


def pick_per_family(rows: list[dict[str, Any]], gap: float, floors: dict[str, str] | None = None
                    ) -> dict[str, str | None]:
    """Each family's pick: the fastest search (q/s on the tuning queries) whose tuning mAP@k is within `gap`
    points of exact search's there (rows[0]); None where no setting of the family qualifies.

    Args:
        floors: family -> another family whose pick's tuning recall@k its pick must also reach (that family is
            picked first, by the rule above).
    """
    bar = rows[0]["tune"]["map"] - gap / 100
    floors = floors or {}
    picks: dict[str, str | None] = {}
    families = list(dict.fromkeys(r["family"] for r in rows if r["family"]))
    by_name = {r["config"]: r for r in rows}
    for family in sorted(families, key=lambda f: f in floors):  # floor families after the ones they lean on
        fit = [r for r in rows if r["family"] == family and r["tune"]["map"] >= bar - 1e-12]
        base = by_name.get(picks.get(floors.get(family)) or "")
        if family in floors:
            fit = [r for r in fit if base is not None and r["tune"]["result_recall"] >= base["tune"]["result_recall"]]
        picks[family] = max(fit, key=lambda r: r["tune"]["qps"])["config"] if fit else None
    return {family: picks[family] for family in families}


def compare(rows: list[dict[str, Any]], picks: dict[str, str | None], baseline: str | None) -> list[dict[str, Any]]:
    """Every family's pick against the baseline family's pick, on the evaluation queries: ratios of q/s, single
    latency, build seconds, peak RSS and bytes per vector, and each pick's mAP@k gap to exact search."""
    by_name = {r["config"]: r for r in rows}
    exact = rows[0]
    base = by_name.get(picks.get(baseline)) if baseline else None
    out = []
    for family, name in picks.items():
        if name is None:
            out.append({"family": family, "pick": None})
            continue
        r = by_name[name]
        entry = {"family": family, "pick": name, "map_gap": 100 * (r["map"] - exact["map"]),
                 "tune_map_gap": 100 * (r["tune"]["map"] - exact["tune"]["map"]), "qps": r["qps"],
                 "vs_exact_qps": r["qps"] / exact["qps"]}
        if base is not None and base is not r:
            entry.update({
                "vs_baseline_qps": r["qps"] / base["qps"],
                "vs_baseline_single": (r["single_ms"] / base["single_ms"]) if r["single_ms"] and base["single_ms"]
                else None,
                "vs_baseline_build": r["build_seconds"] / base["build_seconds"],
                "vs_baseline_peak_rss": r["peak_rss_gib"] / base["peak_rss_gib"],
                "vs_baseline_bytes": (r["bytes_per_vector"] / base["bytes_per_vector"])
                if r["bytes_per_vector"] and base["bytes_per_vector"] else None,
                "vs_baseline_resident": (r["resident_bytes_per_vector"] / base["resident_bytes_per_vector"])
                if r.get("resident_bytes_per_vector") and base.get("resident_bytes_per_vector") else None,
                "vs_baseline_recall": r["result_recall"] - base["result_recall"]})
        out.append(entry)
    return out


def judge(rows: list[dict[str, Any]], picks: dict[str, str | None], cfg: RetrievalBenchConfig) -> dict[str, Any]:
    """Met / missed for each of `cfg.targets` (the target family's pick against the baseline's pick, evaluation
    queries), with the figures behind each."""
    t, k = cfg.targets, cfg.k
    by_name = {r["config"]: r for r in rows}
    mine, base = by_name.get(picks.get(t.family) or ""), by_name.get(picks.get(cfg.baseline) or "")
    if mine is None or base is None:
        return {"family": t.family, "pick": None, "rows": [
            {"target": "a pick within the accuracy bar", "bar": f"mAP@{k} within {cfg.map_gap} of exact (tuning)",
             "measured": "no setting qualifies", "met": False}]}
    exact = rows[0]

    def ratio(name, key, bar, most):
        value = mine[key] / base[key] if mine.get(key) and base.get(key) else None
        met = value is not None and (value <= bar if most else value >= bar)
        return {"target": name, "bar": f"{'<=' if most else '>='} {bar:g}x", "measured":
                "-" if value is None else f"{value:.3f}x ({mine[key]:,.2f} vs {base[key]:,.2f})", "met": met}

    gap = 100 * (mine["map"] - exact["map"])
    return {"family": t.family, "pick": mine["config"], "baseline_pick": base["config"], "rows": [
        ratio("resident bytes per vector", "resident_bytes_per_vector", t.resident, True),
        {"target": f"mAP@{k} − exact", "bar": f">= -{cfg.map_gap} points", "measured": f"{gap:+.2f}",
         "met": gap >= -cfg.map_gap - 1e-9},
        {"target": f"recall@{k}", "bar": f">= {cfg.baseline}'s ({100 * base['result_recall']:.1f}%)",
         "measured": f"{100 * mine['result_recall']:.1f}%", "met": mine["result_recall"] >= base["result_recall"]},
        ratio("queries/second", "qps", t.qps, False),
        ratio("median single-query latency", "single_ms", t.single, True),
        ratio("build time", "build_seconds", t.build, True)]}


def run_benchmark(cfg: RetrievalBenchConfig) -> dict[str, Any]:
    """Build, search and measure every configuration; returns the rows and run facts (no files written).

    Every search is a `QueryPlan` run by the same `SearchEngine.run` the service calls. With tuning queries,
    every search also runs on them first, and each family's pick is chosen from those figures alone.
    """
    import faiss
    import torch

    threads = cfg.threads or os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    kernels.set_threads(threads)
    started = time.perf_counter()
    reset_peak_rss()
    store, db_labels, query_sets, dim, manifest = load_data(cfg)
    load_peak = peak_rss_bytes()
    store_bytes = store.vectors.nbytes / len(store)
    codes: dict[tuple[str, int], tuple[CodeStore, float]] = {}  # (kind, size) -> (store, build seconds), kept
    k = cfg.k
    rows: list[dict[str, Any]] = []
    reference: dict[str, np.ndarray] = {}
    order = list(dict.fromkeys(s.index for s in cfg.searches))  # indexes in first-use order
    for name in order:
        reset_peak_rss()
        spec = cfg.indexes[name]
        first_sizes = tuple({s.rerank[0][0] or dim for s in cfg.searches if s.index == name and s.rerank})
        source, build_seconds = build_source(spec, store, dim, cfg.seed, cfg.device,
                                             first_sizes if spec.kind == "adanns" else ())
        held = source_bytes(source)
        log.info("index %s (%s) built in %.1fs", name, source.label, build_seconds)
        for search in (s for s in cfg.searches if s.index == name):
            plan = search.plan(spec.kind == "adanns", dim, k)
            for key in plan.code_stages():
                if key not in codes:
                    t0 = time.perf_counter()
                    codes[key] = (CodeStore.build(store.vectors, key[0], key[1], seed=cfg.seed),
                                  time.perf_counter() - t0)
                    log.info("%s codes of the %d-prefix built in %.1fs", *key, codes[key][1])
            engine = SearchEngine(store, {name: source}, [codes[key][0] for key in plan.code_stages()])
            tuned = None
            if "tune" in query_sets:
                queries, labels = query_sets["tune"]
                tuned = measure(engine, plan, queries, labels, db_labels, search, k, threads, reference.get("tune"),
                                single=False)
                reference.setdefault("tune", tuned.pop("positions"))
            queries, labels = query_sets["eval"]
            row = measure(engine, plan, queries, labels, db_labels, search, k, threads, reference.get("eval"))
            reference.setdefault("eval", row.pop("positions"))
            # what a deployment of this search holds: its index and codes, plus the full-size vectors when it
            # reranks with them (in memory or as file pages: `resident` leaves out the latter)
            code_bytes = sum(codes[key][0].nbytes for key in plan.code_stages())
            floats = any(r.codes == "float" for r in plan.reranks)
            per_vector = None if held is None else (held + code_bytes + (len(store) * store_bytes if floats else 0)
                                                    ) / len(store)
            resident = None if held is None else engine.resident_bytes(plan) / len(store)
            rows.append({
                "config": search.name, "family": search.family, "index": name, "index_kind": spec.kind,
                "deploy": deployment(search, spec, dim, k),
                "index_size": source.size, "rerank": [[r.size, r.keep] for r in plan.reranks],
                "ef_search": search.ef_search, "nprobe": search.nprobe, **row, "tune": tuned,
                "build_seconds": build_seconds + sum(codes[key][1] for key in plan.code_stages()),
                "peak_rss_gib": (peak_rss_bytes() or 0) / 2**30,
                "bytes_per_vector": per_vector, "resident_bytes_per_vector": resident,
            })
            r = rows[-1]
            log.info("%s: top-1 %.2f mAP@%d %.2f recall@%d %.3f, %.0f q/s, single %s ms, %.3g mult-adds/query, "
                     "%s B/row resident%s", search.name,
                     100 * r["top1"], k, 100 * r["map"], k, r["result_recall"], r["qps"],
                     "-" if r["single_ms"] is None else f"{r['single_ms']:.2f}", r["madds_per_query"],
                     "-" if resident is None else f"{resident:,.0f}",
                     "" if tuned is None else f"; tuning queries: mAP@{k} {100 * tuned['map']:.2f}, "
                     f"{tuned['qps']:.0f} q/s")
        del engine, source
    floors = {cfg.targets.family: cfg.baseline} if cfg.targets else {}
    picks = pick_per_family(rows, cfg.map_gap, floors) if "tune" in query_sets else {}
    eval_queries = query_sets["eval"][0]
    return {"rows": rows, "k": k, "dim": dim, "rows_database": len(store), "queries": len(eval_queries),
            "tune_queries": len(query_sets["tune"][0]) if "tune" in query_sets else 0, "map_gap": cfg.map_gap,
            "picks": picks, "comparison": compare(rows, picks, cfg.baseline) if picks else [],
            "targets": judge(rows, picks, cfg) if picks and cfg.targets else None,
            "baseline": cfg.baseline,
            "dtype": str(store.vectors.dtype), "vectors": cfg.vectors, "threads": threads,
            "machine": machine_description(threads),
            "load_peak_rss_gib": (load_peak or 0) / 2**30, "seconds": time.perf_counter() - started,
            "model_uri": manifest.get("model_uri"), "augment": manifest.get("augment"),
            "embeddings": str(Path(cfg.embeddings).resolve())}


def prefix_study(cfg: RetrievalBenchConfig, sizes: tuple[int, ...], shortlists: tuple[int, ...],
                 query_set: str = "tune") -> dict[str, Any]:
    """How well each prefix alone ranks: for every size m, exact search on the m-prefix for the largest
    shortlist, then the share of the exact full-size top-k found within its first K (for each K in
    `shortlists`) and the mAP@k of its own top-k. This bounds every shortlist on that prefix, whatever the
    index: a graph or IVF shortlist of K can only find less.

    Runs on the tuning queries by default (what a search's settings may be chosen from).
    """
    store, db_labels, query_sets, dim, manifest = load_data(cfg)
    if query_set not in query_sets:
        raise ConfigError(f"no {query_set!r} queries: set tune_queries")
    queries, labels = query_sets[query_set]
    k, deepest = cfg.k, max(shortlists)
    rows: list[dict[str, Any]] = []
    reference = None
    for m in sorted(set(sizes) | {dim}, reverse=True):  # d first: the reference
        t0 = time.perf_counter()
        engine = exact_engine(store.vectors, [m], device="cpu")
        positions = engine.run(exact_plan(index_source(m), deepest), queries).positions
        del engine
        if reference is None:
            reference = positions[:, :k]
        rows.append({"size": m, "map": label_metrics(positions[:, :k], labels, db_labels, k)[f"map@{k}"],
                     "recall": {str(s): recall_of(reference, positions[:, :s]) for s in shortlists}})
        log.info("prefix %d: mAP@%d %.2f, exact top-%d within its top-%s: %s (%.0fs)", m, k, 100 * rows[-1]["map"], k,
                 "/".join(map(str, shortlists)), " ".join(f"{v:.3f}" for v in rows[-1]["recall"].values()),
                 time.perf_counter() - t0)
    return {"rows": sorted(rows, key=lambda r: r["size"]), "k": k, "shortlists": list(shortlists), "dim": dim,
            "queries": len(queries), "query_set": query_set, "rows_database": len(store),
            "model_uri": manifest.get("model_uri"), "embeddings": str(Path(cfg.embeddings).resolve())}
