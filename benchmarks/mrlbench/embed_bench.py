"""The embed stage against a plain PyTorch loop doing the same work, side by side in one run.

Both read the same model and the same Fashion-MNIST split, build the same rows (the split as it is, or grown
by seeded augmentation to N rows, `mrl.stages.embed.augmented_rows`), embed them with `embed_images` in
batches of the same size on the same number of threads, and write Parquet files of the same rows. The stage
runs as its own process (`jobs/embed.py`, a local Ray cluster, an actor pool of one thread per actor), so its
driver's and actors' peak resident memory can be read from its manifest; its wall time counts everything
from the command to the verified manifest, Ray's start included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mrl.artifacts.tracking import load_model, resolve_tracking_uri
from mrl.config import DataConfig, MlflowConfig, ModelConfig
from mrl.configio import from_dict
from mrl.data.preprocess import inference_model
from mrl.data.readers import TableRows, image_table
from mrl.data.sources import load_split
from mrl.stages.embed import augmented_rows, embed_rows


def plain_loop(model_uri: str, tracking_uri: str, rows: int | None, batch_size: int, rows_per_file: int,
               threads: int, out: Path, seed: int = 0, train_limit: int | None = None) -> float:
    """Seconds for a single-process loop: rows (None: the train split as it is) embedded and written to Parquet."""
    import mlflow
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    torch.set_num_threads(threads)
    mlflow.set_tracking_uri(tracking_uri)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = inference_model(load_model(model_uri), "cpu", "auto")
    spec = from_dict(ModelConfig, model.spec, prefix="model.")
    images, labels = load_split(DataConfig(train_limit=train_limit), spec, "train")  # all in memory
    table, shape = TableRows(image_table(images, labels, np.arange(len(labels)))), images.shape[1:]
    total = rows or table.n
    for part, lo in enumerate(range(0, total, rows_per_file)):
        hi = min(total, lo + rows_per_file)
        pieces = []
        for i in range(lo, hi, batch_size):
            j = min(hi, i + batch_size)
            b = augmented_rows(table, i, j, seed, shape) if rows else table.read(i, j)
            pieces.append(embed_rows(model, b, shape, "float32"))
        pq.write_table(pa.concat_tables(pieces), out / f"part-{part:05d}.parquet")
    return time.perf_counter() - t0


def stage_run(repo: Path, output_dir: Path, model_uri: str, run_name: str, rows: int | None, batch_size: int,
              rows_per_file: int, actors: int, train_limit: int | None = None) -> tuple[float, dict[str, Any]]:
    """Seconds for `jobs/embed.py` on the train split (grown to `rows` when given), and its manifest."""
    overrides = [f"output_dir={output_dir}", f"model_uri={model_uri}", f"run_name={run_name}",
                 "embed.splits=[train]", f"embed.batch_size={batch_size}", f"embed.rows_per_file={rows_per_file}",
                 f"embed.num_actors={actors}", "embed.cpus_per_actor=1"]
    if rows:
        overrides.append(f"embed.augment_rows={rows}")
    if train_limit:
        overrides.append(f"data.train_limit={train_limit}")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(repo / "jobs" / "embed.py"), "--config", str(repo / "jobs" / "embed.yaml"),
                    *overrides], check=True, stdout=sys.stderr)
    seconds = time.perf_counter() - t0
    manifest = json.loads((output_dir / "embeddings" / run_name / "manifest.json").read_text())
    return seconds, manifest


def run(repo: Path, output_dir: Path, model_uri: str, corpora: dict[str, int | None], batch_size: int = 512,
        rows_per_file: int = 10_000, actors: int = 2, train_limit: int | None = None) -> dict[str, Any]:
    """Stage and plain loop on every corpus (name -> rows, None = the train split as it is, cut to
    `train_limit` rows when given)."""
    tracking_uri = resolve_tracking_uri(MlflowConfig(), str(output_dir))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = []
    for name, rows in corpora.items():
        stage_s, manifest = stage_run(repo, output_dir, model_uri, f"bench-{name}-{stamp}", rows, batch_size,
                                      rows_per_file, actors, train_limit)
        plain_s = plain_loop(model_uri, tracking_uri, rows, batch_size, rows_per_file, actors,
                             output_dir / "embed_bench_plain" / f"{name}-{stamp}", train_limit=train_limit)
        n = manifest["rows"]["train"]
        peaks = manifest["peak_rss_bytes"]
        results.append({"corpus": name, "rows": n, "stage_seconds": stage_s, "plain_seconds": plain_s,
                        "stage_rows_per_s": n / stage_s, "plain_rows_per_s": n / plain_s,
                        "stage_over_plain": plain_s / stage_s, "driver_peak_rss": peaks["driver"],
                        "actor_peak_rss": peaks["actors"]["train"], "verified": manifest["verified"]["train"]})
        print(f"[embed_bench] {name}: {n:,} rows; stage {stage_s:.0f}s ({n / stage_s:,.0f} rows/s), plain loop "
              f"{plain_s:.0f}s ({n / plain_s:,.0f} rows/s): {plain_s / stage_s:.2f}x; peak RSS driver "
              f"{peaks['driver'] / 2**20:,.0f} MiB, actor {peaks['actors']['train'] / 2**20:,.0f} MiB", flush=True)
    return {"results": results, "batch_size": batch_size, "rows_per_file": rows_per_file, "actors": actors,
            "threads": actors, "model_uri": model_uri, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


def render(result: dict[str, Any], command: str) -> str:
    r = result["results"]
    lines = ["# Embed stage against a plain PyTorch loop", "",
             f"Command: `{command}`. Date: {result['date']}. {result['cpus']} CPUs. Model {result['model_uri']}; "
             f"batch {result['batch_size']}; {result['rows_per_file']:,} rows per unit/file; the stage runs "
             f"{result['actors']} actors of one thread, the plain loop {result['threads']} threads in one process. "
             "The stage's time runs from the command to its verified manifest (Ray's start and the actors' "
             "model loading included); the plain loop's from loading the model to its last file.", "",
             "| corpus | rows | stage (s) | stage rows/s | plain loop (s) | plain rows/s | stage / plain | "
             "driver peak RSS (MiB) | actor peak RSS (MiB) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r:
        lines.append(f"| {x['corpus']} | {x['rows']:,} | {x['stage_seconds']:.0f} | {x['stage_rows_per_s']:,.0f} | "
                     f"{x['plain_seconds']:.0f} | {x['plain_rows_per_s']:,.0f} | {x['stage_over_plain']:.2f}x | "
                     f"{x['driver_peak_rss'] / 2**20:,.0f} | {x['actor_peak_rss'] / 2**20:,.0f} |")
    if len(r) == 2:
        a, b = r
        lines += ["", f"Peak RSS, {b['rows']:,} rows against {a['rows']:,}: driver "
                  f"{b['driver_peak_rss'] / a['driver_peak_rss']:.2f}x, actor "
                  f"{b['actor_peak_rss'] / a['actor_peak_rss']:.2f}x."]
    return "\n".join(lines) + "\n"
