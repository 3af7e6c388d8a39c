"""The train stage: MRL training with Ray Train's TorchTrainer (gloo CPU workers or NCCL GPU workers).

Image rows stream to the workers through Ray Data (`streamed_datasets`: read where the data lives, local
files here, shared storage on a cluster; the driver holds metadata only); text pairs are loaded by each worker.
Each worker trains the DDP-wrapped model on its shard of every epoch, and every epoch all workers report
per-size validation accuracy; rank 0 attaches a checkpoint. Rerunning with the same run name and output_dir
resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mrl import storage
from mrl.artifacts import tracking
from mrl.artifacts.datasets import digest_cache
from mrl.artifacts.model_files import ModelFileError
from mrl.configio import from_dict, to_dict
from mrl.core.models import build_model
from mrl.data.sources import open_split, split_location
from mrl.data.tokenize import TextTokenizer
from mrl.runtime import quiet_ray_data
from mrl.stages.config import TrainJobConfig
from mrl.stages.objectives import make_objective
from mrl.stages.stage import stage_run

CHECKPOINT_FILE = "checkpoint.pt"
# Inside workers, progress goes through logging: Ray Train tees bare print() to stdout and its logger,
# which shows every line twice.
logger = logging.getLogger("mrl.stages.train")


def lr_factor(step: int, total_steps: int, warmup_fraction: float = 0.1, schedule: str = "cosine") -> float:
    """Linear warm-up over the first `warmup_fraction` of steps, then cosine decay to 0 (or constant)."""
    warmup = max(1, int(total_steps * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _autocast_factory(precision: str, device: torch.device):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        import contextlib
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclasses.dataclass
class Loop:
    """What the training loop carries from epoch to epoch on one rank."""

    job: TrainJobConfig
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module  # DDP-wrapped inside Ray Train
    objective: Any  # mrl.stages.objectives: the batches, the loss and the validation hits
    optimizer: torch.optim.Optimizer
    scheduler: Any
    autocast: Callable
    start_epoch: int = 0


def run_loop(job: TrainJobConfig, *, rank: int = 0, world: int = 1, device=None,
             prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
             restore: dict[str, Any] | None = None,
             on_epoch: Callable[[dict[str, float], dict[str, Any] | None], None] | None = None,
             streamed_rows: dict[str, int] | None = None):
    """The training loop shared by Ray Train workers and in-process training: set up, then per epoch train,
    validate and (rank 0) snapshot.

    Args:
        job: the validated config.
        rank, world: this process's place among data-parallel workers (all-reduce only when world > 1).
        device: torch device (default CPU).
        prepare: wraps the model for distribution (Ray Train's prepare_model -> DDP).
        restore: a checkpoint state to resume from (model, optimizer, scheduler, epoch, model_spec).
        on_epoch: called every epoch on every rank with the metrics and, on rank 0, the checkpoint state.
        streamed_rows: inside a Ray Train run given datasets: their row counts ({"train", "val"}); image rows
            then stream from `ray.train.get_dataset_shard` instead of being loaded here.

    Returns:
        The trained `MRLModel` (unwrapped), in eval mode.
    """
    loop = setup_loop(job, rank, world, device or torch.device("cpu"), prepare, restore, streamed_rows)
    for epoch in range(loop.start_epoch, job.train.epochs):
        metrics = train_epoch(loop, epoch)
        metrics.update(validate(loop, metrics))
        state = snapshot(loop, epoch, metrics) if rank == 0 else None
        if on_epoch is not None:
            on_epoch(metrics, state)
    return _unwrap(loop.model).eval()


def setup_loop(job: TrainJobConfig, rank: int, world: int, device: torch.device,
               prepare: Callable[[torch.nn.Module], torch.nn.Module] | None, restore: dict[str, Any] | None,
               streamed_rows: dict[str, int] | None) -> Loop:
    """The objective, model, optimizer and schedule of a run, restored from `restore` when given."""
    torch.manual_seed(job.train.seed)
    tokenizer = None
    if restore is not None and restore.get("tokenizer"):
        tokenizer = TextTokenizer.from_json(restore["tokenizer"], job.model.text.max_tokens)
    objective = make_objective(job, rank, world, device, tokenizer, streamed_rows)
    model = build_model(to_dict(job.model)).to(device)
    model.tokenizer = objective.tokenizer
    if prepare is not None:
        model = prepare(model)
    if job.train.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=job.train.lr, weight_decay=job.train.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=job.train.lr, momentum=0.9,
                                    weight_decay=job.train.weight_decay, nesterov=True)
    total_steps = len(objective.batches(rank, world, job.train.batch_size, 0)) * job.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, schedule=job.train.schedule))
    loop = Loop(job=job, rank=rank, world=world, device=device, model=model, objective=objective,
                optimizer=optimizer, scheduler=scheduler, autocast=_autocast_factory(job.resources.precision, device))
    if restore is not None:  # resume (same run name) or restart after a failure
        if restore["model_spec"] != to_dict(job.model):
            raise ValueError(f"run {job.run_name!r} under {job.output_dir} holds a checkpoint of another model "
                             f"config ({restore['model_spec']}); pick another run_name to start a new run")
        _unwrap(model).load_state_dict(restore["model"])
        optimizer.load_state_dict(restore["optimizer"])
        scheduler.load_state_dict(restore["scheduler"])
        loop.start_epoch = restore["epoch"] + 1
        if rank == 0:
            left = max(0, job.train.epochs - loop.start_epoch)
            logger.info(f"[train] run {job.run_name!r} resumed from its checkpoint after epoch {loop.start_epoch}; "
                        f"{left} epoch(s) left of train.epochs={job.train.epochs}")
    return loop


def train_epoch(loop: Loop, epoch: int) -> dict[str, float]:
    """One epoch of optimisation on this rank's shard; its metrics so far (epoch, the loss summed over this
    rank's steps and their count, which `validate` turns into the mean over all ranks, when it started, and the
    seconds spent waiting for data)."""
    job, rank = loop.job, loop.rank
    loop.model.train()
    started = time.time()
    batches = loop.objective.batches(rank, loop.world, job.train.batch_size, job.train.seed * 1000 + epoch)
    loss_sum = torch.zeros((), device=loop.device)
    waited, ready = 0.0, time.perf_counter()
    for step, batch in enumerate(batches):
        waited += time.perf_counter() - ready  # time this rank stood waiting for its next batch
        with loop.autocast():
            loss = loop.objective.loss(loop.model, batch, (epoch, step))
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        loop.scheduler.step()
        loss_sum += loss.detach()
        ready = time.perf_counter()
        if rank == 0 and (step + 1) % max(1, len(batches) // 4) == 0:
            spent = time.time() - started
            rate = (step + 1) * job.train.batch_size * loop.world / max(spent, 1e-9)
            eta = spent / (step + 1) * (len(batches) - step - 1)
            logger.info(f"[train] epoch {epoch + 1}/{job.train.epochs} step {step + 1}/{len(batches)} "
                        f"loss {loss.item():.4f}, {rate:,.0f} rows/s, epoch ETA {eta:.0f}s ({spent:.0f}s)")
    return {"epoch": epoch + 1, "train_loss": loss_sum.item(), "steps": float(len(batches)), "started": started,
            "data_wait_seconds": waited}


def validate(loop: Loop, metrics: dict[str, float]) -> dict[str, float]:
    """Per-size validation accuracy over every rank's validation rows (each of the objective's measures: top-1,
    and a text model's pair R@10 too), and the mean train loss over every rank's steps (all-reduced when
    world > 1); `metrics` is `train_epoch`'s."""
    import torch.distributed as dist

    loop.model.eval()
    sizes, measures = _unwrap(loop.model).sizes, loop.objective.measures
    correct, n_val_mine = loop.objective.val_hits(_unwrap(loop.model), loop.autocast)  # no DDP collectives
    if correct is None:  # no validation rows on this rank
        correct = torch.zeros((len(measures), len(sizes)), dtype=torch.int64, device=loop.device)
    correct = correct.reshape(len(measures), len(sizes))  # a single measure may come as (G,)
    totals = torch.tensor([float(n_val_mine), metrics.pop("train_loss"), metrics.pop("steps")], device=loop.device)
    if loop.world > 1:
        correct = correct.to(loop.device)
        dist.all_reduce(correct)
        dist.all_reduce(totals)
    n_val, loss_total, n_steps = totals.tolist()
    out = {"train_loss": loss_total / max(1.0, n_steps), "epoch_seconds": time.time() - metrics.pop("started")}
    if n_val > 0:  # val_<measure>_d<m> per size, and _min, _full, _mean, for each of the objective's measures
        for measure, accs in zip(measures, (correct.double() / n_val).tolist()):
            out.update({f"val_{measure}_d{m}": a for m, a in zip(sizes, accs)})
            out.update({f"val_{measure}_min": accs[0], f"val_{measure}_full": accs[-1],
                        f"val_{measure}_mean": float(np.mean(accs))})
    return out


def snapshot(loop: Loop, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
    """Rank 0's checkpoint state after `epoch` (model, optimizer, schedule, model spec, tokenizer), and the
    epoch's line in the log."""
    job, model = loop.job, _unwrap(loop.model)
    tokenizer = loop.objective.tokenizer
    shown = " ".join(f"{m}:{metrics.get(f'val_top1_d{m}', float('nan')) * 100:.2f}" for m in model.sizes)
    logger.info(f"[train] epoch {epoch + 1}/{job.train.epochs} done in {metrics['epoch_seconds']:.0f}s "
                f"({metrics['data_wait_seconds']:.1f}s waiting for data), "
                f"loss {metrics['train_loss']:.4f}, {loop.objective.metric} % by size {shown}")
    return {"model": model.state_dict(), "optimizer": loop.optimizer.state_dict(),
            "scheduler": loop.scheduler.state_dict(), "epoch": epoch, "model_spec": to_dict(job.model),
            "tokenizer": tokenizer.to_json() if tokenizer is not None else None}


def train_local(job: TrainJobConfig, threads: int | None = None):
    """Train in this process (no Ray Train): the same loop, one worker, CPU. Used where many small models
    are trained side by side (the reproduction benchmark runs them as Ray tasks).

    Returns:
        The trained `MRLModel` in eval mode.
    """
    torch.set_num_threads(threads or job.resources.threads_per_worker or job.resources.cpus_per_worker)
    return run_loop(job)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker function. loop_config: {"job": TrainJobConfig dict, "mlflow_run_id", "tracking_uri"}."""
    import ray.train
    import ray.train.torch

    job = from_dict(TrainJobConfig, loop_config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(job.resources.threads_per_worker or job.resources.cpus_per_worker)
    device = ray.train.torch.get_device()

    restore = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            restore = read_checkpoint(Path(ckpt_dir) / CHECKPOINT_FILE, map_location=device)

    client = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        from mlflow import MlflowClient
        client = MlflowClient(loop_config["tracking_uri"])

    def on_epoch(metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if state is not None:  # rank 0
                torch.save(state, Path(tmp) / CHECKPOINT_FILE)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)  # a barrier: every rank reports every epoch
        if client is not None:  # after the checkpoint is saved: an epoch cut short by a failure is never logged
            from mlflow.entities import Metric
            now = int(time.time() * 1000)
            client.log_batch(loop_config["mlflow_run_id"], metrics=[
                Metric(k, float(v), now, int(metrics["epoch"])) for k, v in metrics.items()])

    run_loop(job, rank=rank, world=world, device=device, prepare=ray.train.torch.prepare_model, restore=restore,
             on_epoch=on_epoch, streamed_rows=loop_config.get("rows"))


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def resolve_use_gpu(setting: bool | str) -> bool:
    """`auto` -> whether the Ray cluster has GPUs; booleans pass through."""
    if setting != "auto":
        return bool(setting)
    import ray
    return ray.cluster_resources().get("GPU", 0) > 0


def fit(job: TrainJobConfig, *, mlflow_run_id: str | None = None, tracking_uri: str | None = None,
        storage_path: str | None = None, callbacks: list | None = None):
    """Run `train_loop_per_worker` on a TorchTrainer and return the Ray Train Result.

    Args:
        job: the validated training config.
        mlflow_run_id, tracking_uri: rank 0 logs per-epoch metrics to this run.
        storage_path: where Ray Train keeps checkpoints (default job.storage_path, else <artifacts>/ray; on a
            multi-node cluster it must be shared storage such as s3:// or NFS).
        callbacks: Ray Train callbacks (e.g. Tune's TuneReportCallback).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if job.run_name is None:
        raise ValueError("fit() needs a run_name; run() picks one per invocation")
    checkpoints = storage_path or job.storage_path or storage.absolute(storage.join(job.artifacts, "ray"))
    use_gpu = resolve_use_gpu(job.resources.use_gpu)
    datasets, rows = streamed_datasets(job) if job.model.modality == "image" else (None, None)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": to_dict(job), "mlflow_run_id": mlflow_run_id, "tracking_uri": tracking_uri,
                           "rows": rows},
        datasets=datasets,
        scaling_config=ScalingConfig(num_workers=job.resources.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": job.resources.cpus_per_worker,
                                                           **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(name=job.run_name, storage_path=checkpoints,
                             failure_config=FailureConfig(max_failures=job.resources.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=callbacks or None),
    )
    return trainer.fit()


def streamed_datasets(job: TrainJobConfig) -> tuple[dict[str, Any], dict[str, int]]:
    """The training and validation parts of the train split as Ray Data datasets (read by Ray Data's workers;
    the driver opens the split from metadata only), and their row counts.

    The parts are `train_val_indices`' seeded split (data.seed); read blocks come in an order seeded by
    train.seed. The validation part is read once, here, and kept in the object store for every epoch's
    validation; so is the training part when `train.cache_blocks` allows (`cache_blocks`), else every epoch
    streams it from the source. `job.data` must be prepared (`mrl.data.sources.prepare_data`: Fashion-MNIST as
    Parquet shards).
    """
    import ray

    from mrl.data.datasource import ray_dataset  # lazy: imports ray.data, which only a streamed image run needs

    quiet_ray_data()  # one line per unit / quarter epoch instead of Ray Data's operator dumps
    shape = (job.model.in_channels, job.model.image_size, job.model.image_size)
    reader = open_split(job.data, shape, "train")
    n_val = int(round(reader.n * job.data.val_fraction))
    parts = {"train": reader.n - n_val, "val": n_val}
    datasets = {part: ray_dataset(reader, part, job.data.val_fraction, split_seed=job.data.seed,
                                  order_seed=job.train.seed) for part, n in parts.items() if n > 0}
    if "val" in datasets:  # read once into the object store, not again every epoch (a few % of the split)
        datasets["val"] = datasets["val"].materialize()
    if "train" in datasets:
        nbytes = parts["train"] * (int(np.prod(shape)) + 16)  # uint8 pixels, int64 id and label
        if cache_blocks(job.train.cache_blocks, nbytes, ray.cluster_resources().get("object_store_memory", 0)):
            datasets["train"] = datasets["train"].materialize()
            print(f"[train] training part cached in the object store after one read: {parts['train']:,} rows, "
                  f"{nbytes / 2**20:,.0f} MiB", flush=True)
        else:
            print(f"[train] training part streamed from split {reader.name!r} every epoch ({parts['train']:,} "
                  f"rows, train.cache_blocks={job.train.cache_blocks})", flush=True)
    return datasets, parts


def cache_blocks(mode: str, nbytes: int, store_bytes: float) -> bool:
    """Whether the training part (`nbytes` decoded) is kept in an object store of `store_bytes` (train.cache_blocks):
    auto caches what takes at most a quarter of the store, leaving room for everything else the cluster holds."""
    if mode == "auto":
        return nbytes <= store_bytes / 4
    return mode == "always"


def checkpoint_uri(checkpoint) -> str:
    """Where a Ray Train checkpoint lives, as a URI for remote filesystems (s3://bucket/..., gs://...) and a
    plain path on a local (or mounted) filesystem: a checkpoint's `path` alone drops the scheme."""
    kind = getattr(checkpoint.filesystem, "type_name", "local")
    if kind == "local":
        return checkpoint.path
    scheme = {"gcs": "gs"}.get(kind, kind)
    return f"{scheme}://{checkpoint.path}"


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a training checkpoint written by `run_loop`'s rank 0 (`torch.save` of the state dict).

    Loaded with `weights_only=True`: the state holds only tensors, the optimizer/scheduler state dicts
    (numbers, tuples, None; LambdaLR stores None for its lambda) and the plain-dict model spec, so a file
    that would need arbitrary classes (or run code) to unpickle is refused.

    Args:
        path: the checkpoint file.
        map_location: torch device for the tensors.

    Returns:
        {"model", "optimizer", "scheduler", "epoch", "model_spec"}.

    Raises:
        ModelFileError: the file is not a plain-data checkpoint.
    """
    import pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, EOFError) as exc:
        raise ModelFileError(f"{path}: refused to load the checkpoint; it is not plain tensors and data "
                             f"(checkpoints load with weights_only=True): {exc}") from exc


def load_checkpoint_model(checkpoint):
    """Rebuild the `MRLModel` saved in a Ray Train checkpoint (CPU, eval mode)."""

    with checkpoint.as_directory() as ckpt_dir:
        state = read_checkpoint(Path(ckpt_dir) / CHECKPOINT_FILE)
    model = build_model(state["model_spec"])
    model.load_state_dict(state["model"])
    if state.get("tokenizer"):
        model.tokenizer = TextTokenizer.from_json(state["tokenizer"], model.spec["text"]["max_tokens"])
    return model.eval()


def run(job: TrainJobConfig) -> dict[str, Any]:
    """The whole train stage: Ray Train fit, then the model logged and registered in MLflow.

    Returns:
        {"run_id", "model_uri", "model_version", "metrics", "seconds"}.
    """
    import mlflow

    if job.run_name is None:
        job = dataclasses.replace(job, run_name=time.strftime("train-%Y%m%d-%H%M%S"))
    with stage_run("train", job, run_name=job.run_name) as stage:
        job = stage.job  # its data prepared
        tracking.log_params(to_dict(job))
        mlflow.log_params({"model.sizes": str(job.model.sizes), "model.weights": str(job.model.weights)})
        tracking.log_dataset(f"{job.data.source}-train", split_location(job.data, "train"),
                             digest_cache(job.output_dir))
        result = fit(job, mlflow_run_id=stage.run_id, tracking_uri=stage.tracking_uri)
        if result.error is not None:
            raise result.error
        model = load_checkpoint_model(result.checkpoint)
        checkpoint = checkpoint_uri(result.checkpoint)
        metadata = {"dim": model.dim, "sizes": model.sizes, "head": job.model.head, "encoder": job.model.encoder,
                    "model_spec": to_dict(job.model), "train_run_id": stage.run_id, "checkpoint": checkpoint}
        info = tracking.log_model(model, job.mlflow.registered_model, metadata)
        mlflow.set_tag(tracking.TAG_CHECKPOINT, checkpoint)
        mlflow.log_metric("train_wall_seconds", stage.seconds)
    version = str(info.registered_model_version) if info.registered_model_version is not None else None
    model_uri = f"models:/{job.mlflow.registered_model}/{version}" if version else info.model_uri
    first = version is not None and tracking.promote_if_first(job.mlflow.registered_model, version)
    alias = f"; it is the first, so @{tracking.CHAMPION} points at it" if first else \
        f"; promote it with `mrl promote model_uri={model_uri}`"
    print(f"[train] registered {model_uri} (run {stage.run_id}) in {stage.seconds:.0f}s{alias}", flush=True)
    return {"run_id": stage.run_id, "model_uri": model_uri, "model_version": version,
            "metrics": dict(result.metrics or {}), "seconds": stage.seconds}
