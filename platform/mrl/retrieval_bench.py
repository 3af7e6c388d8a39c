"""The retrieval benchmark: search configurations side by side against exact full-size search, in one run.

A benchmark config (YAML, `RetrievalBenchConfig`) names indexes and search configurations. Indexes are built
in the order listed, each just before the searches that use it, and freed after them, so a 1M x 2048 run never
holds two full-size float32 indexes at once. The first search is the reference: exact full-size search, whose
top-k every other configuration's shortlist and results are compared with.

Every search is staged: the index returns a shortlist of K candidates at its prefix size (or the members
of the probed cells, for an AdANNS index), then each `rerank` stage rescores the survivors exactly at a larger
prefix and keeps fewer. Exact search has no rerank stage; adaptive retrieval has one (D_r = d); the funnel has
several.

Measured per search: 1-NN accuracy (top-1), mAP@k, P@k, recall of the exact top-k within the shortlist and
within the results, queries/second over the whole query batch (median of `repeats`), median latency of
single queries, multiply-adds per query (counted by FAISS for graph and IVF indexes), and the process's peak
resident memory while the index was built and searched.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mrl.config import ConfigError, JobConfig, _check, _positive

log = logging.getLogger("mrl.bench")


@dataclass(frozen=True, kw_only=True)
class BenchIndex:
    """One index over one prefix size of the database."""

    kind: Literal["flat", "hnsw", "ivf", "ivfpq", "adanns"] = "flat"
    """flat | hnsw | ivf | ivfpq (FAISS), or adanns: cells on this prefix, members scored on the next stage's."""
    size: int | None = None
    """Prefix size the index is built on; None: the full d."""
    hnsw_m: int = 32
    ef_construction: int = 40
    nlist: int = 1024
    pq_m: int = 16

    def __post_init__(self) -> None:
        _positive("size", self.size, allow_none=True)
        for name in ("hnsw_m", "ef_construction", "nlist", "pq_m"):
            _positive(name, getattr(self, name))


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
    """IVF cells probed; None: the index's own setting (AdANNS: mrl.ann.DEFAULT_NPROBE)."""
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
        sizes = [m for m, _ in self.rerank if m is not None]
        nulls = [i for i, (m, _) in enumerate(self.rerank) if m is None]
        _check(nulls in ([], [len(self.rerank) - 1]) and all(m > 0 for m in sizes) and sizes == sorted(set(sizes)),
               f"rerank sizes must be > 0 and increase, with null (= d) only last; got {[list(r) for r in self.rerank]}")
        keeps = [self.shortlist] + [k for _, k in self.rerank]
        _check(all(k > 0 for k in keeps), f"rerank keeps must be > 0, got {list(self.rerank)}")
        _check(keeps[1:] == sorted(keeps[1:], reverse=True),
               f"rerank keeps must not grow from stage to stage, got {list(self.rerank)}")


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
            last = s.rerank[-1][1] if s.rerank else s.shortlist
            _check(last >= self.k, f"searches[{i}] ({s.name}) keeps {last} results, fewer than k={self.k}")
            if self.indexes[s.index].kind == "adanns":
                _check(len(s.rerank) > 0, f"searches[{i}] ({s.name}): an adanns index needs a rerank stage to "
                                          "score the probed cells' members")
        first = self.searches[0]
        _check(self.indexes[first.index].kind == "flat" and self.indexes[first.index].size is None
               and not first.rerank,
               "searches[0] must be the reference: exact full-size search (a flat index with size null, no rerank)")
        _check(len({s.name for s in self.searches}) == len(self.searches), "search names must be unique")


# ------------------------------------------------------------------------------------------ measurement


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """VmHWM: the process's peak resident memory since start or the last reset (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_description(threads: int) -> str:
    """CPU model, cores, memory, library versions: the line every result file states."""
    import faiss
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else float("nan")
    from mrl.search import gpu_count

    gpus = f"{gpu_count()} FAISS GPUs, {torch.cuda.device_count()} CUDA devices"
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, {gpus}; {threads} threads for batches, 1 for "
            f"single queries; FAISS {faiss.__version__}, PyTorch {torch.__version__}, numpy {np.__version__}")


# ------------------------------------------------------------------------------------------ search


@dataclass
class BuiltIndex:
    spec: BenchIndex
    size: int
    index: Any  # a FAISS index or an AdannsIVF
    seconds: float
    ef_search: int | None = None  # the index's own search knobs, restored when a search leaves them unset
    nprobe: int | None = None


def build(spec: BenchIndex, store, dim: int, seed: int, device: str = "cpu") -> BuiltIndex:
    """Build one benchmark index over the store's vectors (moved to the GPU when `device` asks for it)."""
    from mrl.ann import AdannsIVF
    from mrl.search import build_prefix_index, to_device

    size = spec.size or dim
    if size > dim:
        raise ConfigError(f"index size {size} is above the embeddings' d={dim}")
    t0 = time.perf_counter()
    if spec.kind == "adanns":
        index = AdannsIVF.build(store.vectors, cluster_size=size, nlist=spec.nlist, seed=seed)
    else:
        index = build_prefix_index(store.vectors, size, spec.kind, hnsw_m=spec.hnsw_m,
                                   ef_construction=spec.ef_construction, nlist=spec.nlist, pq_m=spec.pq_m, seed=seed)
        index = to_device(index, device)
    seconds = time.perf_counter() - t0
    return BuiltIndex(spec, size, index, seconds, getattr(getattr(index, "hnsw", None), "efSearch", None),
                      getattr(index, "nprobe", None))


def run_search(built: BuiltIndex, search: BenchSearch, store, queries: np.ndarray, dim: int,
               timings: list[tuple[str, float]] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """One staged search over all `queries`.

    Args:
        timings: when given, (stage, seconds) pairs are appended: the index search, then each rerank.

    Returns:
        (positions (Q, k_last), shortlist positions (Q, K), multiply-adds per query).
    """
    import faiss

    from mrl.search import faiss_search, rerank

    q = len(queries)
    t0 = time.perf_counter()
    if built.spec.kind == "adanns":
        cand = built.index.candidates(queries, search.nprobe)
        madds = built.index.nlist * built.size + float((cand >= 0).sum()) / q * (search.rerank[0][0] or dim)
        shortlist = cand
    else:
        index = built.index
        if built.ef_search is not None:  # every search starts from the index's own knobs: no leaks between rows
            index.hnsw.efSearch = search.ef_search or built.ef_search
        if built.nprobe is not None:
            index.nprobe = search.nprobe or built.nprobe
        faiss.cvar.hnsw_stats.reset()
        faiss.cvar.indexIVF_stats.reset()
        _, shortlist = faiss_search(index, queries, built.size, search.shortlist)
        if built.spec.kind == "flat":
            madds = float(index.ntotal * built.size)
        elif built.spec.kind == "hnsw":
            madds = faiss.cvar.hnsw_stats.ndis / q * built.size
        else:
            per_code = built.spec.pq_m if built.spec.kind == "ivfpq" else built.size
            madds = index.nlist * built.size + faiss.cvar.indexIVF_stats.ndis / q * per_code
    if timings is not None:
        timings.append((f"{built.spec.kind}@{built.size}", time.perf_counter() - t0))
    positions, kept = shortlist, shortlist.shape[1]
    for i, (size, keep) in enumerate(search.rerank):
        size = size or dim
        t0 = time.perf_counter()
        if built.spec.kind != "adanns" or positions is not shortlist:
            madds += kept * size
        _, positions = rerank(positions, store, queries, size, keep, sort=i == len(search.rerank) - 1)
        kept = keep
        if timings is not None:
            timings.append((f"rerank@{size}", time.perf_counter() - t0))
    return positions, shortlist, madds


def recall_of(reference: np.ndarray, found: np.ndarray) -> float:
    """Mean share of each row of `reference` (Q, k) present anywhere in the same row of `found` (Q, L)."""
    hits = [np.isin(r, f[f >= 0]).mean() for r, f in zip(reference, found)]
    return float(np.mean(hits))


def time_search(fn, queries: np.ndarray, repeats: int, single: int, threads: int = 1
                ) -> tuple[float, float | None, list[float]]:
    """(median batch seconds with `threads`, median single-query seconds on one thread or None, batch times).

    Single queries run on one thread, as a Serve replica runs them. (With two threads, FAISS's and PyTorch's
    OpenMP pools spin-wait against each other between a query's stages: 8.0 ms instead of 0.8 ms for one
    adaptive query on 2 cores. Passive waiting cures that but slowed batched funnels by a third.)
    """
    import faiss
    import torch

    fn(queries[: min(8, len(queries))])  # warm-up: page in memory maps
    batch = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(queries)
        batch.append(time.perf_counter() - t0)
    singles = []
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    try:
        for i in range(min(single, len(queries))):
            t0 = time.perf_counter()
            fn(queries[i:i + 1])
            singles.append(time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(threads)
        torch.set_num_threads(threads)
    return float(np.median(batch)), (float(np.median(singles)) if singles else None), batch


# ------------------------------------------------------------------------------------------ the run


def load_data(cfg: RetrievalBenchConfig):
    """Database store, database labels, queries, query labels, d, manifest."""
    from mrl.embed import read_embeddings, read_manifest
    from mrl.search import PrefixStore, torch_device

    emb = Path(cfg.embeddings).resolve()
    manifest = read_manifest(emb)
    too_big = sorted({m for s in cfg.searches for m, _ in s.rerank if m is not None and m > manifest["dim"]}
                     | {i.size for i in cfg.indexes.values() if i.size is not None and i.size > manifest["dim"]})
    if too_big:
        raise ConfigError(f"sizes {too_big} are above the embeddings' d={manifest['dim']} ({emb})")
    bad_pq = {name: i.size or manifest["dim"] for name, i in cfg.indexes.items()
              if i.kind == "ivfpq" and (i.size or manifest["dim"]) % i.pq_m}
    if bad_pq:
        raise ConfigError(f"ivfpq indexes {sorted(bad_pq)}: pq_m must divide the index size "
                          f"({', '.join(f'{n}: size {m}' for n, m in sorted(bad_pq.items()))})")
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
    """Build, search and measure every configuration; returns the rows and run facts (no files written)."""
    import faiss
    import torch

    from mrl.metrics import retrieval_metrics

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
        built = build(cfg.indexes[name], store, dim, cfg.seed, cfg.device)
        log.info("index %s (%s @ %d) built in %.1fs", name, built.spec.kind, built.size, built.seconds)
        for search in (s for s in cfg.searches if s.index == name):
            stages: list[tuple[str, float]] = []  # the first (untimed-for-q/s) pass doubles as the profile
            positions, shortlist, madds = run_search(built, search, store, queries, dim, stages)
            positions = positions[:, :k]
            if reference is None:
                reference = positions
            batch_s, single_s, _ = time_search(lambda x, b=built, s=search: run_search(b, s, store, x, dim), queries,
                                               search.repeats, search.single, threads)
            retrieved = np.where(positions >= 0, db_labels[np.maximum(positions, 0)], -1)
            metrics = retrieval_metrics(retrieved, q_labels, db_labels, k)
            rows.append({
                "config": search.name, "index": name, "index_kind": built.spec.kind, "index_size": built.size,
                "shortlist": int(shortlist.shape[1]), "rerank": [[s or dim, kk] for s, kk in search.rerank],
                "ef_search": search.ef_search, "nprobe": search.nprobe,
                "top1": metrics["nn1"], "map": metrics[f"map@{k}"], "precision": metrics[f"precision@{k}"],
                "shortlist_recall": recall_of(reference, shortlist), "result_recall": recall_of(reference, positions),
                "qps": len(queries) / batch_s, "batch_seconds": batch_s, "queries": len(queries),
                "single_ms": None if single_s is None else 1000 * single_s, "madds_per_query": madds,
                "build_seconds": built.seconds, "peak_rss_gib": (peak_rss_bytes() or 0) / 2**30,
                "stage_ms": [[name, 1000 * sec] for name, sec in stages],
            })
            r = rows[-1]
            log.info("%s: top-1 %.2f mAP@%d %.2f, %.0f q/s, single %s ms, %.3g mult-adds/query", search.name,
                     100 * r["top1"], k, 100 * r["map"], r["qps"],
                     "-" if r["single_ms"] is None else f"{r['single_ms']:.2f}", madds)
        del built
    return {"rows": rows, "k": k, "dim": dim, "rows_database": len(store), "queries": len(queries),
            "dtype": str(store.vectors.dtype), "threads": threads, "machine": machine_description(threads),
            "load_peak_rss_gib": (load_peak or 0) / 2**30, "seconds": time.perf_counter() - started,
            "model_uri": manifest.get("model_uri"), "augment": manifest.get("augment"),
            "embeddings": str(Path(cfg.embeddings).resolve())}


# ------------------------------------------------------------------------------------------ report


def render(result: dict[str, Any], command: str, title: str) -> str:
    """The Markdown table: every config against the reference (first row), ratios from this one run."""
    rows, k = result["rows"], result["k"]
    base = rows[0]
    aug = result.get("augment")
    source = (f"{result['rows_database']:,} database rows" + (f" (train split grown by augmentation to "
              f"{aug['rows']:,}, seed {aug['seed']})" if aug else " (train split)"))
    lines = [f"# {title}", "",
             f"Command: `{command}`. Date: {time.strftime('%Y-%m-%d')}. Machine: {result['machine']}.", "",
             f"Embeddings: {result['model_uri']} (d = {result['dim']}), {source}, {result['queries']:,} queries "
             f"from the test split, relevance = same label; vectors held as {result['dtype']}. Whole run "
             f"{result['seconds'] / 60:.1f} min. Speed-ups are queries/second over the first row's, measured "
             "in this run; q/s is the median of repeated passes over the whole query batch; single queries run on one "
             "thread, as a Serve replica runs them.", "",
             f"| config | top-1 | mAP@{k} | P@{k} | exact top-{k} in shortlist | in results | batch (ms) | q/s | "
             "speed-up | median single (ms) | mult-adds / query | build (s) | peak RSS (GiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        single = "-" if r["single_ms"] is None else f"{r['single_ms']:.2f}"
        lines.append(
            f"| {r['config']} | {100 * r['top1']:.2f} | {100 * r['map']:.2f} | {100 * r['precision']:.2f} | "
            f"{100 * r['shortlist_recall']:.1f}% | {100 * r['result_recall']:.1f}% | "
            f"{1000 * r['queries'] / r['qps']:,.0f} | {r['qps']:,.0f} | "
            f"{r['qps'] / base['qps']:.1f}x | {single} | {r['madds_per_query']:,.0f} | {r['build_seconds']:.1f} | "
            f"{r['peak_rss_gib']:.1f} |")
    lines += ["", f"Where the time goes (one pass over all {result['queries']:,} queries, milliseconds per stage):", ""]
    for r in rows:
        if len(r.get("stage_ms", [])) > 1:
            lines.append(f"- {r['config']}: " + ", ".join(f"{name} {ms:.0f}" for name, ms in r["stage_ms"]))
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path, title: str) -> None:
    """Pareto plot: mAP@k against queries/second, one numbered point per config (legend below), with the
    exact search's mAP@k - 0.1 drawn as the accuracy bar."""
    from mrl.plots import pyplot

    plt = pyplot()
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(9, 5.5 + 0.17 * len(rows)))
    bar = 100 * rows[0]["map"] - 0.1
    ax.axhline(bar, color="grey", lw=0.8, ls="--")
    ax.annotate("exact - 0.1", (rows[0]["qps"], bar), fontsize=7, color="grey", xytext=(2, -9),
                textcoords="offset points")
    colours = plt.get_cmap("tab20")
    for i, r in enumerate(rows, 1):
        ax.scatter(r["qps"], 100 * r["map"], s=28, color=colours((i - 1) % 20), label=f"{i}. {r['config']}")
        ax.annotate(str(i), (r["qps"], 100 * r["map"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("queries / second (batch, log scale)")
    ax.set_ylabel(f"mAP@{result['k']} (%)")
    ax.set_title(f"{title}\naccuracy vs throughput", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(cfg: RetrievalBenchConfig, result: dict[str, Any], command: str, repo: Path) -> Path:
    """<results>.md / .json / _pareto.png under `repo`, also logged to MLflow as a `retrieval-benchmark` run."""
    import json

    import mlflow

    from mrl import tracking
    from mrl.configio import to_dict

    stem = repo / cfg.results
    stem.parent.mkdir(parents=True, exist_ok=True)
    md, js, png = stem.with_suffix(".md"), stem.with_suffix(".json"), stem.parent / f"{stem.name}_pareto.png"
    md.write_text(render(result, command, cfg.title))
    js.write_text(json.dumps({"command": command, "config": to_dict(cfg), **result}, indent=1))
    plot(result, png, cfg.title)
    tracking.setup(cfg.mlflow, cfg.output_dir)
    with mlflow.start_run(run_name="retrieval-benchmark", tags={"mrl.stage": "benchmark",
                                                                 "mrl.input_uri": result["embeddings"]}):
        tracking.log_params({"benchmark": {k: v for k, v in to_dict(cfg).items() if k != "searches"}})
        for i, r in enumerate(result["rows"]):
            mlflow.log_metrics({f"map_{i}": r["map"], f"qps_{i}": r["qps"], f"top1_{i}": r["top1"]})
        for file in (md, js, png):
            mlflow.log_artifact(str(file))
    return md
