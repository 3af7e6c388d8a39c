"""The train stage (Ray Train, one worker, rows through Ray Data) against the same training loop in one process
over in-memory tensors, side by side in one run: same model, data, batch size, epochs and threads.

Both run `mrl.stages.train.run_loop`; the stage's worker takes its batches from `ray.train.get_dataset_shard`
(`StreamedClassification`), once with the training blocks cached in the object store after one read (what
`train.cache_blocks=auto` does for a split this size) and once streamed from the Parquet shards every epoch
(`never`); the in-process loop indexes tensors it loaded up front (`Classification`, what `train_local` runs).
Throughput is training rows per second of an epoch (the loop's own `epoch_seconds`, validation included, as
both report it); the stage's wall time from the call to the registered model is reported beside it, Ray's
start, the workers' start and MLflow included.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any

from mrl.artifacts.tracking import resolve_tracking_uri
from mrl.config import TrainJobConfig
from mrl.configio import load_config
from mrl.stages.train import run as run_train
from mrl.stages.train import run_loop
from mrlbench.cpu_shares import CpuShares


def in_process(job) -> tuple[list[float], list[float]]:
    """Per-epoch seconds of the loop in this process over in-memory tensors, and when each epoch ended."""
    import torch

    torch.set_num_threads(job.resources.threads_per_worker or job.resources.cpus_per_worker)
    seconds: list[float] = []
    ends: list[float] = []

    def on_epoch(metrics, state):
        seconds.append(metrics["epoch_seconds"])
        ends.append(time.time())

    run_loop(job, on_epoch=on_epoch)
    return seconds, ends


def stage(job) -> tuple[list[float], float, list[float]]:
    """Per-epoch seconds of the train stage's Ray Train worker (from its MLflow metric history), the stage's
    wall time, and when each epoch ended (its metrics' timestamps)."""
    from mlflow import MlflowClient

    t0 = time.perf_counter()
    result = run_train(job)
    wall = time.perf_counter() - t0
    client = MlflowClient(resolve_tracking_uri(job.mlflow, job.output_dir))
    history = sorted(client.get_metric_history(result["run_id"], "epoch_seconds"), key=lambda m: m.step)
    return [m.value for m in history], wall, [m.timestamp / 1000 for m in history]


def steady_shares(cpu: CpuShares, ends: list[float], trainer) -> dict[str, float]:
    """CPU shares from the end of the first epoch to the end of the last ({} with one epoch)."""
    return cpu.between(ends[0], ends[-1], trainer) if len(ends) > 1 else {}


VARIANTS = {"cached": "train stage, blocks cached after one read (train.cache_blocks=auto, the default here)",
            "streamed": "train stage, every epoch streamed from the Parquet shards (train.cache_blocks=never)",
            "in_process": "the same loop in one process, in-memory tensors"}


def run(job, train_rows: int, repeats: int = 1) -> dict[str, Any]:
    """The stage with cached and with streamed blocks, and the in-process loop, `repeats` times in turn on `job`
    (a TrainJobConfig with one worker); train_rows: training rows an epoch. Each way's throughput comes from its
    median epoch after the first; the ratios are taken within a repeat and their median is the headline."""
    import ray

    if job.resources.num_workers != 1:
        raise ValueError(f"the comparison is for one worker; got resources.num_workers={job.resources.num_workers}")
    steady = slice(1, None) if job.train.epochs > 1 else slice(None)  # the first epoch warms caches and threads
    rounds = []
    for r in range(repeats):
        row: dict[str, Any] = {}
        for variant, cache in (("cached", job.train.cache_blocks), ("streamed", "never")):
            staged = dataclasses.replace(job, run_name=f"{job.run_name}-{variant}-{r}",
                                         train=dataclasses.replace(job.train, cache_blocks=cache))
            with CpuShares() as cpu:
                epochs, wall, ends = stage(staged)
            ray.shutdown()
            shares = steady_shares(cpu, ends, lambda pid, cmd: cmd.startswith("ray::RayTrainWorker"))
            row[variant] = {"epoch_seconds": epochs, "wall_seconds": wall, "cpu_shares": shares}
        with CpuShares() as cpu:
            epochs, ends = in_process(job)
        me = os.getpid()
        row["in_process"] = {"epoch_seconds": epochs, "cpu_shares": steady_shares(cpu, ends, lambda p, c: p == me)}
        for way in row.values():
            way["rows_per_s"] = train_rows / statistics.median(way["epoch_seconds"][steady])
        for variant in ("cached", "streamed"):
            row[variant]["over_in_process"] = row[variant]["rows_per_s"] / row["in_process"]["rows_per_s"]
        print(f"[train_bench] repeat {r + 1}/{repeats}, {train_rows:,} rows/epoch: " + ", ".join(
            f"{v} {row[v]['rows_per_s']:,.0f} rows/s" for v in VARIANTS) + "; cached/in-process "
            f"{row['cached']['over_in_process']:.2f}x, streamed/in-process {row['streamed']['over_in_process']:.2f}x",
            flush=True)
        rounds.append(row)
    return {"train_rows": train_rows, "epochs": job.train.epochs, "batch_size": job.train.batch_size,
            "threads": job.resources.threads_per_worker or job.resources.cpus_per_worker, "repeats": rounds,
            "median_over_in_process": {v: statistics.median(row[v]["over_in_process"] for row in rounds)
                                       for v in ("cached", "streamed")},
            "model": {"encoder": job.model.encoder, "dim": job.model.dim}, "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d")}


def render(result: dict[str, Any], command: str) -> str:
    epochs = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    rounds = result["repeats"]
    lines = [
        "# Train stage (Ray Train + Ray Data) against the same loop in one process", "",
        f"Command: `{command}`. Date: {result['date']}. {result['cpus']} CPUs. Model {result['model']['encoder']} "
        f"d={result['model']['dim']}; {result['train_rows']:,} training rows an epoch; batch "
        f"{result['batch_size']}; {result['threads']} threads each; {result['epochs']} epochs. Ray Train runs one "
        f"worker. The three ways run in turn, {len(rounds)} time(s). Throughput comes from each run's median "
        "epoch after the first, validation included in both.", "",
        "CPU: the share of both cores each got from the end of the first epoch to the end of the last, read from "
        "/proc every 2 s: the training process (the Ray Train worker, or the in-process loop) and every other "
        "process together (Ray's own when the stage runs).", "",
        "| repeat | way | rows/s | / in-process | epoch seconds | wall (s) | CPU: trainer | CPU: others |",
        "|---:|---|---:|---:|---|---:|---:|---:|"]
    pct = lambda shares, k: f"{100 * shares[k]:.1f}%" if k in shares else ""  # noqa: E731
    for r, row in enumerate(rounds, 1):
        for v, label in VARIANTS.items():
            way = row[v]
            ratio = f"{way['over_in_process']:.2f}x" if "over_in_process" in way else ""
            wall = f"{way['wall_seconds']:.0f}" if "wall_seconds" in way else ""
            lines.append(f"| {r} | {label} | {way['rows_per_s']:,.0f} | {ratio} | {epochs(way['epoch_seconds'])} "
                         f"| {wall} | {pct(way['cpu_shares'], 'trainer')} | {pct(way['cpu_shares'], 'others')} |")
    med = result["median_over_in_process"]
    lines += ["", f"Median over repeats, stage / in-process: **{med['cached']:.2f}x** with cached blocks, "
              f"**{med['streamed']:.2f}x** streamed every epoch. The stage's wall time runs from the call to the "
              "registered model (Ray's and the worker's start, the first read, MLflow).", ""]
    return "\n".join(lines)


def default_job(output_dir: Path, rows: int, epochs: int, threads: int):
    repo = Path(__file__).resolve().parents[2]  # benchmarks/mrlbench/train_bench.py
    return load_config(TrainJobConfig, repo / "jobs" / "train.yaml", [
        f"output_dir={output_dir}", f"run_name=train-bench-{time.strftime('%Y%m%d-%H%M%S')}",
        f"data.train_limit={rows}", f"train.epochs={epochs}", "resources.num_workers=1",
        f"resources.cpus_per_worker={threads}", "mlflow.registered_model=mrl-train-bench"])
