"""The CPU rerank step two ways, side by side in one process: the fused Numba kernel
(`mrl.retrieval.kernels.prefix_cosines`, what `rerank` uses when Numba is installed) against the PyTorch block
path it replaced (gather a block of candidate prefixes, widen to float32, multiply, reduce), on a float16
store of random rows the size of the retrieval benchmark's (1,000,000 x 2048).

    python benchmarks/rerank_kernel.py          # ~1 min on 2 cores; writes docs/results/rerank_kernel.md/.json
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CASES = ((50, 2048), (200, 512), (400, 128))  # (candidates, prefix): the shapes of the funnels' stages


def main() -> int:
    import torch

    from mrl.retrieval import kernels
    from mrl.retrieval.store import PrefixStore, _torch_scores
    from mrl.retrieval.topk import normalize_prefix

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    kernels.set_threads(threads)
    rng = np.random.default_rng(0)
    rows, dim, queries = 1_000_000, 2048, 1000
    vectors = np.empty((rows, dim), np.float16)
    for lo in range(0, rows, 1 << 16):
        vectors[lo:lo + (1 << 16)] = rng.standard_normal((min(1 << 16, rows - lo), dim), dtype=np.float32)
    store = PrefixStore(vectors)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    out = {"rows": rows, "dim": dim, "queries": queries, "threads": threads, "dtype": "float16", "cases": []}
    for k, size in CASES:
        cand = rng.integers(0, rows, (queries, k))
        unit = normalize_prefix(q, size)
        paths = {"numba": lambda: kernels.prefix_cosines(vectors, cand, unit, size),
                 "torch": lambda: _torch_scores(store, cand, unit, size)}
        times = {}
        for name, fn in paths.items():
            fn()
            runs = []
            for _ in range(7):
                t0 = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - t0)
            times[name] = float(np.median(runs))
        diff = float(np.abs(paths["numba"]() - paths["torch"]()).max())
        out["cases"].append({"candidates": k, "prefix": size, "numba_ms": 1000 * times["numba"],
                             "torch_ms": 1000 * times["torch"], "speedup": times["torch"] / times["numba"],
                             "max_score_difference": diff})
        print(f"[rerank_kernel] {queries} x {k} x {size}: numba {1000 * times['numba']:.1f} ms, torch "
              f"{1000 * times['torch']:.1f} ms ({times['torch'] / times['numba']:.2f}x), max diff {diff:.1e}",
              flush=True)
    lines = ["# CPU rerank: fused Numba kernel against the PyTorch block path", "",
             f"Command: `python benchmarks/rerank_kernel.py`. Date: {time.strftime('%Y-%m-%d')}. {threads} threads; "
             f"{queries:,} queries, random candidates over {rows:,} x {dim} float16 random rows; medians of 7 passes "
             "after a warm-up.", "",
             "| candidates | prefix | Numba kernel (ms) | PyTorch blocks (ms) | speed-up | max score difference |",
             "|---:|---:|---:|---:|---:|---:|"]
    for c in out["cases"]:
        lines.append(f"| {c['candidates']} | {c['prefix']} | {c['numba_ms']:.1f} | {c['torch_ms']:.1f} | "
                     f"{c['speedup']:.2f}x | {c['max_score_difference']:.1e} |")
    stem = REPO / "docs" / "results" / "rerank_kernel"
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
