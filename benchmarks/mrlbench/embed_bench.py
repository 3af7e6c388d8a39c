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

import numpy as np

from mrl import storage
from mrl.artifacts.tracking import load_model, resolve_tracking_uri
from mrl.config import DataConfig, MlflowConfig, ModelConfig
from mrl.configio import from_dict
from mrl.data.preprocess import inference_model
from mrl.data.readers import TableRows, image_table
from mrl.data.sources import load_split
from mrl.stages.embed import augmented_rows, embed_rows
from mrlbench.local_s3 import local_s3


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
              rows_per_file: int, actors: int, train_limit: int | None = None, extra: list[str] | None = None
              ) -> tuple[float, dict[str, Any]]:
    """Seconds for `jobs/embed.py` on the train split (grown to `rows` when given), and its manifest; `extra`:
    more overrides (artifacts_dir, data.shards_path)."""
    overrides = [*(extra or []), f"output_dir={output_dir}", f"model_uri={model_uri}", f"run_name={run_name}",
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
    artifacts = next((o.split("=", 1)[1] for o in extra or [] if o.startswith("artifacts_dir=")), str(output_dir))
    manifest = json.loads(storage.read_bytes(storage.join(artifacts, "embeddings", run_name, "manifest.json")))
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


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _alternating(ways: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """Seconds of each way (a callable), once each untimed to warm up, then `rounds` times in alternation."""
    for fn in ways.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            times[name].append(_timed(fn))
    return times


def _read_all(shards: str, shape: tuple[int, int, int], rows_per_unit: int) -> int:
    """Every train row read by position, a unit at a time, as the stage's actors read them."""
    from mrl.data.sources import open_split

    reader = open_split(DataConfig(shards_path=shards), shape, "train")
    return sum(reader.read(lo, min(reader.n, lo + rows_per_unit)).num_rows for lo in range(0, reader.n, rows_per_unit))


def _stream_rows(shards: str, shape: tuple[int, int, int], ours: bool) -> int:
    """Rows of the train split streamed through Ray Data: the platform's read tasks (`ray_dataset`, what training
    streams) or Ray Data's own `read_parquet` over the same shards."""
    import ray

    from mrl.data.datasource import ray_dataset
    from mrl.data.sources import open_split

    reader = open_split(DataConfig(shards_path=shards), shape, "train")
    ds = ray_dataset(reader, "train", 0.05, 0, 0) if ours else ray.data.read_parquet(list(reader.paths))
    return sum(len(b["label"]) for b in ds.iter_batches(batch_size=4096, batch_format="numpy"))


def run_storage(repo: Path, output_dir: Path, model_uri: str, rounds: int = 2, batch_size: int = 512,
                rows_per_file: int = 10_000, actors: int = 2) -> dict[str, Any]:
    """The embed stage on the Fashion-MNIST train split with its data and output on local disk, and with both on
    an S3 endpoint on this machine (moto), alternating for `rounds`; then where the difference goes (reading
    the rows by unit, uploading the unit files) and the training stream's reader against Ray Data's
    `read_parquet` on the same shards."""
    import ray

    from mrl import storage
    from mrl.data.readers import convert_fashion_mnist
    from mrl.data.sources import FASHION_MNIST_DIR

    stamp = time.strftime("%Y%m%d-%H%M%S")
    local_shards = str(output_dir / "bench-data" / "fashion-mnist")
    convert_fashion_mnist(FASHION_MNIST_DIR, local_shards)
    shape = (1, 28, 28)
    with local_s3():
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        upload_s = _timed(lambda: convert_fashion_mnist(FASHION_MNIST_DIR, "s3://bench/fm"))
        times: dict[str, list[float]] = {"local": [], "s3": []}
        for i in range(rounds):
            for where in ("local", "s3"):
                extra = [f"data.shards_path={local_shards}"] if where == "local" else \
                    ["data.shards_path=s3://bench/fm", "artifacts_dir=s3://bench/art"]
                seconds, manifest = stage_run(repo, output_dir, model_uri, f"storage-{where}-{stamp}-{i}", None,
                                              batch_size, rows_per_file, actors, extra=extra)
                times[where].append(seconds)
                print(f"[embed_bench] round {i + 1}: {where} {seconds:.0f}s", flush=True)
        where = {"local": local_shards, "s3": "s3://bench/fm"}
        read = _alternating({w: lambda s=s: _read_all(s, shape, rows_per_file) for w, s in where.items()}, rounds)
        local_run = output_dir / "embeddings" / f"storage-local-{stamp}-0" / "train"
        upload = [_timed(lambda: storage.upload_dir(local_run, f"s3://bench/copy-{j}", last=[]))
                  for j in range(rounds)]
        files = sorted(f.name for f in local_run.glob("*.parquet"))
        checksums = _alternating({w: lambda base=base: [storage.sha256(f"{base}/{f}") for f in files]
                                  for w, base in (("local", str(local_run)), ("s3", "s3://bench/copy-0"))}, rounds)
        written = sum(f.stat().st_size for f in local_run.glob("*.parquet"))
    ray.init(address="local", num_cpus=actors, include_dashboard=False, log_to_driver=False)
    try:
        stream = _alternating({name: lambda name=name: _stream_rows(local_shards, shape, name == "ours")
                               for name in ("ours", "read_parquet")}, rounds)
    finally:
        ray.shutdown()
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"rows": manifest["rows"]["train"], "stage_seconds": times, "median": med,
            "s3_over_local": med["s3"] / med["local"], "read_seconds": read, "upload_seconds": upload,
            "checksum_seconds": checksums, "written_bytes": written, "data_upload_seconds": upload_s,
            "stream_seconds": stream,
            "rounds": rounds, "actors": actors, "batch_size": batch_size, "rows_per_file": rows_per_file,
            "model_uri": model_uri, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


def render_storage(r: dict[str, Any], command: str) -> str:
    med = lambda xs: float(np.median(xs))  # noqa: E731
    units = r["rows"] // r["rows_per_file"] + (r["rows"] % r["rows_per_file"] > 0)
    lines = ["# Embed stage: local disk against an S3 endpoint", "",
             f"Command: `{command}`. Date: {r['date']}. {r['cpus']} CPUs. Model {r['model_uri']}; "
             f"{r['rows']:,} rows (the Fashion-MNIST train split); {r['actors']} actors; {r['rows_per_file']:,} "
             f"rows a unit. The S3 endpoint is moto's server on 127.0.0.1 (a real HTTP S3 API, in-memory, on the "
             f"same 2 cores), so network latency is a loopback's and the server's CPU competes with the stage's; "
             f"a cloud bucket adds round trips and removes that CPU. Medians of {r['rounds']} alternating rounds.",
             "", "| run | data | output | stage seconds (each round) | median | rows/s |",
             "|---|---|---|---|---:|---:|"]
    for where, data, out in (("local", "local Parquet shards", "local disk"),
                             ("s3", "s3://bench/fm", "s3://bench/art")):
        xs = r["stage_seconds"][where]
        lines.append(f"| {where} | {data} | {out} | {', '.join(f'{x:.0f}' for x in xs)} | {med(xs):.0f} | "
                     f"{r['rows'] / med(xs):,.0f} |")
    lines += ["", f"**S3 / local: {r['s3_over_local']:.2f}x the local stage's time** (same rows, same model).", "",
              "Where the difference goes (each measured alone, in this process, after one untimed warm-up, medians "
              f"of {r['rounds']} alternating rounds):", "",
              f"- reading the {r['rows']:,} rows a unit at a time, as the actors do: local "
              f"{med(r['read_seconds']['local']):.2f} s, S3 {med(r['read_seconds']['s3']):.2f} s",
              f"- uploading the run's {units} unit files ({r['written_bytes'] / 2**20:.0f} MiB): "
              f"{med(r['upload_seconds']):.2f} s",
              f"- reading them back for the manifest's checksums: local {med(r['checksum_seconds']['local']):.2f} s, "
              f"S3 {med(r['checksum_seconds']['s3']):.2f} s",
              f"- not in the stage's time: converting and uploading the data once, "
              f"{r['data_upload_seconds']:.0f} s", "",
              "## The training stream's reader against Ray Data's `read_parquet`", "",
              "Rows of the same local shards through Ray Data on a local cluster of "
              f"{r['actors']} CPUs, iterated to the end, after one untimed warm-up (seconds, each round): the "
              "platform's read tasks as a Datasource (`mrl.data.datasource.ray_dataset`: by position, the "
              "training part of the seeded train/validation split) "
              f"{', '.join(f'{x:.2f}' for x in r['stream_seconds']['ours'])}, median "
              f"{med(r['stream_seconds']['ours']):.2f}; `ray.data.read_parquet` (every row, no split) "
              f"{', '.join(f'{x:.2f}' for x in r['stream_seconds']['read_parquet'])}, median "
              f"{med(r['stream_seconds']['read_parquet']):.2f}: "
              f"{med(r['stream_seconds']['ours']) / med(r['stream_seconds']['read_parquet']):.2f}x."]
    return "\n".join(lines) + "\n"
