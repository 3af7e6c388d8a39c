"""Measurement helpers for the benchmarks: the machine line every result states, timing a search over a batch
and one query at a time, and recall against a reference (peak resident memory lives in `mrl.runtime`)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from mrl.retrieval import kernels
from mrl.retrieval.indexes import gpu_count


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
    gpus = f"{gpu_count()} FAISS GPUs, {torch.cuda.device_count()} CUDA devices"
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, {gpus}; {threads} threads for batches, 1 for "
            f"single queries; FAISS {faiss.__version__}, PyTorch {torch.__version__}, numpy {np.__version__}")


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
    kernels.set_threads(1)
    try:
        for i in range(min(single, len(queries))):
            t0 = time.perf_counter()
            fn(queries[i:i + 1])
            singles.append(time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(threads)
        torch.set_num_threads(threads)
        kernels.set_threads(threads)
    return float(np.median(batch)), (float(np.median(singles)) if singles else None), batch
