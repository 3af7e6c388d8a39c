"""Memory-first retrieval with the full vectors on disk, not in the page cache: the same searches timed with the
memory-mapped vector file cached (warm) and evicted before every pass or query (cold), side by side in one run.

    python benchmarks/vector_reads.py [--config benchmarks/retrieval_scale.yaml] [--search NAME ...] [--single 100]

The searches are named from the retrieval benchmark's config (default: its memory family's pick, as in
docs/results/retrieval_scale.md) and built as that benchmark builds them, over its memory-mapped float16 file
(`vectors: mmap`). Cold means: the process's mapping dropped (madvise MADV_DONTNEED) and the file's pages
evicted from the page cache (posix_fadvise POSIX_FADV_DONTNEED) before each timed pass over the query batch
and before each single query, so every float row the rerank reads comes from the disk. Bytes read from the
disk are the process's own (/proc/self/io read_bytes). Writes docs/results/vector_reads.md and .json.
"""

from __future__ import annotations

import argparse
import json
import logging
import mmap
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SEARCH = "BinHNSW-1024 ef 96 K 96 -> int8 512/40 -> d/10"


def disk_read_bytes() -> int:
    """Bytes this process has had read from storage (Linux /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no read_bytes in /proc/self/io")


def evict(vectors: np.memmap, path: Path) -> None:
    """Drop the mapping's pages and the file's page cache: the next row read comes from the disk."""
    vectors._mmap.madvise(mmap.MADV_DONTNEED)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(engine, plan, queries: np.ndarray, single: int, path: Path) -> dict:
    """Warm and cold batch q/s and single-query p50 of one plan, with the disk bytes read per query cold."""
    vectors = engine.store.vectors
    engine.run(plan, queries)  # warm the caches and the kernels
    warm_batch = []
    for _ in range(3):
        t0 = time.perf_counter()
        engine.run(plan, queries)
        warm_batch.append(time.perf_counter() - t0)
    cold_batch, cold_bytes = [], []
    for _ in range(2):
        evict(vectors, path)
        before, t0 = disk_read_bytes(), time.perf_counter()
        engine.run(plan, queries)
        cold_batch.append(time.perf_counter() - t0)
        cold_bytes.append((disk_read_bytes() - before) / len(queries))
    import faiss

    from mrl.retrieval import kernels

    faiss.omp_set_num_threads(1)  # single queries on one thread, as a Serve replica runs them
    kernels.set_threads(1)
    warm_single, cold_single, cold_single_bytes = [], [], []
    for q in queries[:single]:
        t0 = time.perf_counter()
        engine.run(plan, q[None])
        warm_single.append(time.perf_counter() - t0)
    for q in queries[:single]:
        evict(vectors, path)
        before, t0 = disk_read_bytes(), time.perf_counter()
        engine.run(plan, q[None])
        cold_single.append(time.perf_counter() - t0)
        cold_single_bytes.append(disk_read_bytes() - before)
    threads = os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    kernels.set_threads(threads)
    found = engine.run(plan, queries)
    return {"warm_qps": len(queries) / float(np.median(warm_batch)),
            "cold_qps": len(queries) / float(np.median(cold_batch)),
            "warm_single_ms": 1000 * float(np.median(warm_single)),
            "cold_single_ms": 1000 * float(np.median(cold_single)),
            "cold_batch_kib_per_query": float(np.median(cold_bytes)) / 1024,
            "cold_single_kib": float(np.median(cold_single_bytes)) / 1024,
            "logical_kib_per_query": found.vector_bytes / 1024}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "benchmarks" / "retrieval_scale.yaml"))
    parser.add_argument("--search", action="append", help=f"a search name of the config (default: {DEFAULT_SEARCH!r})")
    parser.add_argument("--single", type=int, default=100, help="queries timed one at a time, warm and cold")
    parser.add_argument("--results", default="docs/results/vector_reads")
    args = parser.parse_args(argv)
    import faiss

    from mrl.configio import load_config
    from mrl.retrieval import kernels
    from mrl.retrieval.codes import CodeStore
    from mrl.retrieval.engine import SearchEngine
    from mrlbench.measure import machine_description
    from mrlbench.retrieval_bench import RetrievalBenchConfig, build_source, load_data

    logging.basicConfig(level=logging.INFO, format="[vector_reads %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(RetrievalBenchConfig, args.config, ["vectors=mmap"])
    names = args.search or [DEFAULT_SEARCH]
    by_name = {s.name: s for s in cfg.searches}
    missing = [n for n in names if n not in by_name]
    if missing:
        print(f"vector_reads: no search named {missing} in {args.config}", file=sys.stderr)
        return 2
    threads = os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    kernels.set_threads(threads)
    store, _, query_sets, dim, manifest = load_data(cfg)
    path = Path(store.vectors.filename)
    queries = query_sets["eval"][0]
    rows = []
    for name in names:
        search = by_name[name]
        spec = cfg.indexes[search.index]
        source, build_s = build_source(spec, store, dim, cfg.seed)
        plan = search.plan(spec.kind == "adanns", dim, cfg.k)
        codes = [CodeStore.build(store.vectors, kind, size, seed=cfg.seed) for kind, size in plan.code_stages()]
        engine = SearchEngine(store, {search.index: source}, codes)
        row = {"search": name, "build_seconds": build_s, **measure(engine, plan, queries, args.single, path)}
        logging.info("%s: %s", name, ", ".join(f"{k} {v:,.2f}" for k, v in row.items() if isinstance(v, float)))
        rows.append(row)
    result = {"command": " ".join(["python benchmarks/vector_reads.py", *argv]), "rows": rows,
              "queries": len(queries), "single": args.single, "file": str(path),
              "machine": machine_description(threads), "date": time.strftime("%Y-%m-%d")}
    stem = REPO / args.results
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = ["# Full vectors on disk: warm against cold page cache", "",
             f"Command: `{result['command']}`. Date: {result['date']}. Machine: {result['machine']}. The float16 "
             f"vector file ({path.name}, page-aligned rows, read with MADV_RANDOM) is memory-mapped; cold = its "
             "pages evicted before every timed pass over the "
             f"{len(queries):,} evaluation queries and before each of {args.single} single queries.", "",
             "| search | warm q/s | cold q/s | cold / warm | warm single (ms) | cold single (ms) | "
             "KiB read / query (logical) | KiB from disk / query (batch, cold) | KiB from disk (single, cold) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['search']} | {r['warm_qps']:,.0f} | {r['cold_qps']:,.0f} | "
                     f"{r['cold_qps'] / r['warm_qps']:.2f}x | {r['warm_single_ms']:.2f} | {r['cold_single_ms']:.2f} | "
                     f"{r['logical_kib_per_query']:,.0f} | {r['cold_batch_kib_per_query']:,.0f} | "
                     f"{r['cold_single_kib']:,.0f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
