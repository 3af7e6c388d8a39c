"""The train stage (Ray Train, one worker, rows streamed through Ray Data) against the same training loop in one
process over in-memory tensors, side by side in one run: same model, data, batch size, epochs and threads.

Both run `mrl.stages.train.run_loop`; the stage's worker takes its batches from `ray.train.get_dataset_shard`
(`StreamedClassification`), the in-process loop indexes tensors it loaded up front (`Classification`, what
`train_local` runs). Throughput is training rows per second of an epoch (the loop's own `epoch_seconds`,
validation included, as both report it); the stage's wall time from the call to the registered model is
reported beside it, Ray's start, the workers' start and MLflow included.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any


def in_process(job) -> list[float]:
    """Per-epoch seconds of the loop in this process over in-memory tensors."""
    import torch

    from mrl.stages.train import run_loop

    torch.set_num_threads(job.resources.threads_per_worker or job.resources.cpus_per_worker)
    seconds: list[float] = []
    run_loop(job, on_epoch=lambda metrics, state: seconds.append(metrics["epoch_seconds"]))
    return seconds


def stage(job) -> tuple[list[float], float]:
    """Per-epoch seconds of the train stage's Ray Train worker (from its MLflow metric history), and the stage's
    wall time."""
    from mlflow import MlflowClient

    from mrl.artifacts.tracking import resolve_tracking_uri
    from mrl.stages.train import run_train

    t0 = time.perf_counter()
    result = run_train(job)
    wall = time.perf_counter() - t0
    client = MlflowClient(resolve_tracking_uri(job.mlflow, job.output_dir))
    history = sorted(client.get_metric_history(result["run_id"], "epoch_seconds"), key=lambda m: m.step)
    return [m.value for m in history], wall


def run(job, train_rows: int) -> dict[str, Any]:
    """Both ways on `job` (a TrainJobConfig with one worker); train_rows: training rows an epoch."""
    import ray

    if job.resources.num_workers != 1:
        raise ValueError(f"the comparison is for one worker; got resources.num_workers={job.resources.num_workers}")
    stage_epochs, stage_wall = stage(job)
    ray.shutdown()
    plain_epochs = in_process(job)
    steady = slice(1, None) if len(plain_epochs) > 1 else slice(None)  # the first epoch warms caches and threads
    stage_s, plain_s = statistics.median(stage_epochs[steady]), statistics.median(plain_epochs[steady])
    print(f"[train_bench] {train_rows:,} rows/epoch: stage {train_rows / stage_s:,.0f} rows/s, in-process "
          f"{train_rows / plain_s:,.0f} rows/s: {plain_s / stage_s:.2f}x (stage wall {stage_wall:.0f}s)", flush=True)
    return {"train_rows": train_rows, "epochs": job.train.epochs, "batch_size": job.train.batch_size,
            "threads": job.resources.threads_per_worker or job.resources.cpus_per_worker,
            "stage_epoch_seconds": stage_epochs, "plain_epoch_seconds": plain_epochs,
            "stage_rows_per_s": train_rows / stage_s, "plain_rows_per_s": train_rows / plain_s,
            "stage_over_plain": plain_s / stage_s, "stage_wall_seconds": stage_wall,
            "model": {"encoder": job.model.encoder, "dim": job.model.dim}, "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d")}


def render(result: dict[str, Any], command: str) -> str:
    epochs = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    return "\n".join([
        "# Train stage (Ray Train + Ray Data) against the same loop in one process", "",
        f"Command: `{command}`. Date: {result['date']}. {result['cpus']} CPUs. Model {result['model']['encoder']} "
        f"d={result['model']['dim']}; {result['train_rows']:,} training rows an epoch; batch "
        f"{result['batch_size']}; {result['threads']} threads each; {result['epochs']} epochs. Throughput from the "
        "median epoch after the first (validation included in both).", "",
        "| | rows/s | epoch seconds |", "|---|---:|---|",
        f"| train stage: Ray Train, 1 worker, rows streamed by Ray Data | {result['stage_rows_per_s']:,.0f} | "
        f"{epochs(result['stage_epoch_seconds'])} |",
        f"| the same loop in one process, in-memory tensors | {result['plain_rows_per_s']:,.0f} | "
        f"{epochs(result['plain_epoch_seconds'])} |", "",
        f"Stage / in-process: **{result['stage_over_plain']:.2f}x**. The stage's wall time, call to registered "
        f"model (Ray and worker start, MLflow): {result['stage_wall_seconds']:.0f} s.", ""])


def default_job(output_dir: Path, rows: int, epochs: int, threads: int):
    from mrl.config import TrainJobConfig
    from mrl.configio import load_config

    repo = Path(__file__).resolve().parents[3]
    return load_config(TrainJobConfig, repo / "jobs" / "train.yaml", [
        f"output_dir={output_dir}", f"run_name=train-bench-{time.strftime('%Y%m%d-%H%M%S')}",
        f"data.train_limit={rows}", f"train.epochs={epochs}", "resources.num_workers=1",
        f"resources.cpus_per_worker={threads}", "mlflow.registered_model=mrl-train-bench"])
