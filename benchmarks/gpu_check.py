"""GPU checks of the per-batch paths, runnable where only PyTorch is installed (no Ray, FAISS or MLflow):

1. rerank: the library's device-resident rerank (`mrl.retrieval.store.rerank` on a CUDA `PrefixStore`) of
   Q x K candidates over an (N, d) float16 store, against a plain fused PyTorch gather-and-score measured in
   the same process, and against the CPU path's ids and scores on the same data;
2. embed: the library's `embed_images` (uint8 batches to the GPU, standardised there, bfloat16 weights,
   channels_last) on ResNet-50 at 224 px, against a plain PyTorch loop doing the same by hand, and against the
   path the embed stage used before (standardised to float32 on the CPU, float32 model).

    PYTHONPATH=platform python benchmarks/gpu_check.py --out docs/results/gpu_check.json
    python benchmarks/gpu_check.py --render docs/results/gpu_check.json   # the .md beside it, on any machine

Every figure is a median of repeated timed passes after a warm-up, each pass ending with its results on the
host (a `.cpu()` copy), so no pass is timed before the GPU has finished it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: kernels compiled or loaded, caches allocated
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def check_rerank(rows: int, dim: int, queries: int, shortlist: int, k: int, repeats: int) -> dict:
    from mrl.retrieval import kernels
    from mrl.retrieval.store import PrefixStore, rerank

    rng = np.random.default_rng(0)
    gen = torch.Generator(device="cuda").manual_seed(0)
    on_gpu = torch.randn(rows, dim, device="cuda", dtype=torch.float16, generator=gen)
    host = on_gpu.cpu().numpy()
    del on_gpu
    store = PrefixStore(host, device="cuda")  # the library's copy of the rows on the GPU
    q = rng.normal(size=(queries, dim)).astype(np.float32)
    cand = rng.integers(0, rows, size=(queries, shortlist))
    out = {"rows": rows, "dim": dim, "queries": queries, "shortlist": shortlist, "k": k, "dtype": "float16",
           "sizes": {}}
    for size in (dim, 256):
        library = median_seconds(lambda s=size: rerank(cand, store, q, s, k), repeats)
        rows_gpu = store._rows  # the same resident rows, for the plain versions

        def plain_from_host(s=size):
            pos = torch.from_numpy(cand).cuda()
            unit = torch.from_numpy(q[:, :s]).cuda().half()
            scores = torch.bmm(rows_gpu[:, :s][pos], unit[:, :, None])[..., 0]  # (Q, K) one gather + one product
            return scores.topk(k, dim=1).indices.cpu()

        pos_dev = torch.from_numpy(cand).cuda()
        unit_dev = torch.from_numpy(q[:, :size]).cuda().half()

        def plain_resident(s=size):
            scores = torch.bmm(rows_gpu[:, :s][pos_dev], unit_dev[:, :, None])[..., 0]
            return scores.topk(k, dim=1).indices.cpu()

        plain_host = median_seconds(plain_from_host, repeats)
        plain_dev = median_seconds(plain_resident, repeats)
        gpu_scores, gpu_ids = rerank(cand, store, q, size, k)
        cpu_store = PrefixStore(host)
        rerank(cand[:4], cpu_store, q[:4], size, k)  # warm-up: the CPU kernel compiles on first use
        t0 = time.perf_counter()
        cpu_scores, cpu_ids = rerank(cand, cpu_store, q, size, k)
        cpu_seconds = time.perf_counter() - t0
        out["sizes"][str(size)] = {
            "library_ms": 1000 * library, "plain_fused_from_host_ms": 1000 * plain_host,
            "plain_fused_resident_ms": 1000 * plain_dev,
            "library_over_plain_from_host": library / plain_host, "library_over_plain_resident": library / plain_dev,
            "cpu_path": "numba kernel" if kernels.available() else "pytorch blocks", "cpu_ms": 1000 * cpu_seconds,
            "cpu_threads": torch.get_num_threads(),
            "ids_identical_to_cpu": bool(np.array_equal(gpu_ids, cpu_ids)),
            "ids_differing": int((gpu_ids != cpu_ids).sum()),
            "max_score_difference": float(np.abs(gpu_scores - cpu_scores).max()),
        }
        print(f"[gpu_check] rerank {queries} x {shortlist} x {size} float16: library {1000 * library:.2f} ms, "
              f"plain fused {1000 * plain_host:.2f} ms from the host / {1000 * plain_dev:.2f} ms resident "
              f"({library / plain_host:.2f}x / {library / plain_dev:.2f}x); CPU path {1000 * cpu_seconds:.0f} ms, "
              f"ids identical: {np.array_equal(gpu_ids, cpu_ids)}, max score diff "
              f"{np.abs(gpu_scores - cpu_scores).max():.2e}", flush=True)
    torch.cuda.empty_cache()
    return out


def check_embed(batch: int, batches: int, rounds: int) -> dict:
    import copy

    from mrl.core.models.model import build_model
    from mrl.data.formats import MEAN, STD, to_float
    from mrl.data.preprocess import embed_images, inference_model

    spec = {"encoder": "resnet50", "dim": 2048, "head": "mrl", "num_classes": 1000, "in_channels": 3,
            "image_size": 224, "nesting": {"schedule": "log", "min_size": 8}}
    torch.manual_seed(0)
    model = build_model(spec).eval()
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 256, size=(batch, 3, 224, 224), dtype=np.uint8) for _ in range(4)]
    images = batch * batches

    library_model = inference_model(copy.deepcopy(model), "cuda", "auto")
    plain_model = copy.deepcopy(model).cuda().to(memory_format=torch.channels_last).bfloat16().eval()
    before_model = copy.deepcopy(model).cuda().eval()

    def library():
        for i in range(batches):
            embed_images(library_model, pool[i % 4])

    def plain():
        with torch.no_grad():
            for i in range(batches):
                x = torch.from_numpy(pool[i % 4]).cuda()
                x = ((x.to(torch.bfloat16) / 255 - MEAN) / STD).contiguous(memory_format=torch.channels_last)
                plain_model.embed(x).float().cpu()

    def before():
        with torch.no_grad():
            for i in range(max(1, batches // 4)):
                before_model.embed(torch.from_numpy(to_float(pool[i % 4])).cuda()).float().cpu()

    lib_t, plain_t = [], []
    library()
    plain()
    for _ in range(rounds):  # alternate, so drift in clocks or temperature hits both alike
        lib_t.append(median_seconds(library, 1))
        plain_t.append(median_seconds(plain, 1))
    before_t = median_seconds(before, 1)
    lib_rate, plain_rate = images / float(np.median(lib_t)), images / float(np.median(plain_t))
    before_rate = batch * max(1, batches // 4) / before_t
    with torch.no_grad():
        a = embed_images(library_model, pool[0][:64])
        b = before_model.embed(torch.from_numpy(to_float(pool[0][:64])).cuda()).float().cpu().numpy()
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(f"[gpu_check] embed ResNet-50 224 px, batch {batch}: library {lib_rate:,.0f} img/s, plain PyTorch "
          f"{plain_rate:,.0f} img/s ({lib_rate / plain_rate:.2f}x); the earlier path (float32, standardised on the "
          f"CPU) {before_rate:,.0f} img/s; bf16 vs fp32 embeddings: min cosine {cos.min():.4f}", flush=True)
    return {"model": "resnet50 (transformers ResNetModel from config), d=2048", "image_size": 224, "batch": batch,
            "images_per_pass": images, "rounds": rounds, "library_img_s": lib_rate, "plain_img_s": plain_rate,
            "library_over_plain": lib_rate / plain_rate, "earlier_path_img_s": before_rate,
            "bf16_vs_fp32_min_cosine": float(cos.min()), "bf16_vs_fp32_mean_cosine": float(cos.mean())}


def render(result: dict) -> str:
    """The Markdown summary of a gpu_check JSON."""
    lines = ["# GPU checks of the per-batch paths", "",
             f"Command: `PYTHONPATH=platform python benchmarks/gpu_check.py`. Date: {result['date']}. Device: "
             f"{result['device']}, PyTorch {result['torch']}, {result['cpu_threads']} CPU threads. Medians of "
             "repeated passes after a warm-up; every pass ends with its results on the host.", ""]
    if "rerank" in result:
        r = result["rerank"]
        lines += [f"## Rerank: {r['queries']:,} queries x {r['shortlist']} candidates over {r['rows']:,} rows "
                  f"({r['dtype']}), keep {r['k']}", "",
                  "Library: `mrl.retrieval.store.rerank` on a CUDA `PrefixStore` (positions and raw queries in "
                  "from the host, cosine scores, the CPU's tie rule, ids out). Plain: one gather and one batched "
                  "float16 product by hand, then top-k (inner products, no norms), with its inputs sent from the "
                  "host as the library's are, and with them already on the GPU.", "",
                  "| prefix | library (ms) | plain, from host (ms) | ratio | plain, resident (ms) | ratio | "
                  "CPU path (ms) | ids identical to the CPU path | max score difference |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for size, c in r["sizes"].items():
            lines.append(f"| {size} | {c['library_ms']:.2f} | {c['plain_fused_from_host_ms']:.2f} | "
                         f"{c['library_over_plain_from_host']:.2f}x | {c['plain_fused_resident_ms']:.2f} | "
                         f"{c['library_over_plain_resident']:.2f}x | {c['cpu_ms']:.0f} ({c['cpu_path']}, "
                         f"{c['cpu_threads']} threads) | {c['ids_identical_to_cpu']} | "
                         f"{c['max_score_difference']:.1e} |")
        lines.append("")
    if "embed" in result:
        e = result["embed"]
        lines += [f"## Embed: {e['model']}, {e['image_size']} px, batch {e['batch']}", "",
                  "Library: `mrl.data.preprocess.embed_images` on a model prepared by `inference_model(model, "
                  "\"cuda\")` (uint8 batch to the GPU, standardised there, bfloat16 weights, channels_last, "
                  "float32 representations back). Plain: the same steps written by hand. Earlier path: what the "
                  "embed stage did before (standardised to float32 on the CPU, float32 model).", "",
                  "| library (img/s) | plain PyTorch (img/s) | library / plain | earlier path (img/s) | "
                  "bf16 vs fp32 cosine (min) |", "|---:|---:|---:|---:|---:|",
                  f"| {e['library_img_s']:,.0f} | {e['plain_img_s']:,.0f} | {e['library_over_plain']:.2f}x | "
                  f"{e['earlier_path_img_s']:,.0f} | {e['bf16_vs_fp32_min_cosine']:.5f} |", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/results/gpu_check.json")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--skip", nargs="*", default=[], choices=["rerank", "embed"])
    parser.add_argument("--render", metavar="JSON", help="only write the Markdown beside an existing result")
    args = parser.parse_args(argv)
    if args.render:
        path = Path(args.render)
        path.with_suffix(".md").write_text(render(json.loads(path.read_text())))
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: PyTorch sees no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
              "cpu_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    if "rerank" not in args.skip:
        result["rerank"] = check_rerank(args.rows, 2048, 1000, 200, 10, args.repeats)
    if "embed" not in args.skip:
        result["embed"] = check_embed(256, args.batches, 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
