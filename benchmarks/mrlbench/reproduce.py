"""Reproduce the MRL paper's comparison in shape on a given dataset.

For every seed, trains (as Ray tasks, through the platform's own training loop `train_local`):
MRL and MRL-E over the nesting list, and one fixed-feature model FF-m per size m (same encoder, d = m,
one head). Then, for every size m and every method, measures linear top-1, 1-NN and mAP@k (database =
train split, queries = test split, relevance = same label):

- MRL / MRL-E: their own head at m; retrieval on the normalised prefix z[:m];
- FF-m: its own head; retrieval on its m-d representation;
- reductions of FF-d (the largest FF model): first m features, PCA to m, Gaussian random projection to m,
  each scored by a linear probe trained on the reduced train features, and by retrieval.

Adaptive classification runs on the MRL heads with thresholds searched on the held-out rows of the train
split (never the test split).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrl.artifacts import tracking
from mrl.artifacts.model_files import load_model_dir, save_model_dir
from mrl.config import (
    DataConfig,
    JobConfig,
    ModelConfig,
    RayConfig,
    TrainConfig,
    TrainJobConfig,
    check_paths,
)
from mrl.configio import check, from_dict, positive, to_dict
from mrl.core.adaptive import adaptive_curve, softmax
from mrl.core.metrics import top1_accuracy
from mrl.core.models.model import head_logits
from mrl.core.reduction import PCA, first_m, gaussian_projection, linear_probe_accuracy
from mrl.data.formats import train_val_indices
from mrl.data.preprocess import embed_images
from mrl.data.sources import load_split
from mrl.retrieval.quality import retrieval_at
from mrl.runtime import ensure_ray
from mrl.stages.train import train_local
from mrlbench.comparison import aggregate, check_results_name, check_seeds, seed_jobs
from mrlbench.report import check_targets, plot_adaptive, plot_sizes_by_method, write_tables

METRICS = ("top1", "nn1", "map")


@dataclass(frozen=True, kw_only=True)
class ReproduceTargets:
    """What the reproduction is checked against (the MRL paper's claims, restated as thresholds); fractions,
    e.g. 0.003 = 0.3 points."""

    ff_up_to: int = 64
    """MRL >= FF-m on linear top-1 and 1-NN, within seed spread, at every size up to this."""
    full_size_gap: float = 0.003
    """MRL at least FF-d minus this at full size d (linear top-1)."""
    mrl_e_from: int = 16
    """MRL-E within `mrl_e_gap` of MRL from this size up (linear top-1)."""
    mrl_e_gap: float = 0.01
    reductions_up_to: int = 16
    """The reductions of FF-d (PCA, first m, random projection) below MRL at every size up to this."""
    adaptive_gap: float = 0.003
    """Adaptive classification within this of MRL at d ..."""
    adaptive_size_fraction: float = 0.125
    """... at an expected size of at most this fraction of d."""

    def __post_init__(self) -> None:
        for name in ("ff_up_to", "mrl_e_from", "reductions_up_to"):
            positive(name, getattr(self, name))
        for name in ("full_size_gap", "mrl_e_gap", "adaptive_gap"):
            check(0 <= getattr(self, name) < 1, f"{name} must be in [0, 1), got {getattr(self, name)}")
        check(0 < self.adaptive_size_fraction <= 1,
               f"adaptive_size_fraction must be in (0, 1], got {self.adaptive_size_fraction}")


@dataclass(frozen=True, kw_only=True)
class ReproduceConfig(JobConfig):
    """benchmarks/reproduce.py: MRL and MRL-E against FF-m and reductions of FF-d at every size (the paper's
    Table 1 / Figure 2 protocol) plus adaptive classification. Every model shares backbone, data, epochs and
    optimiser; only the head and representation size differ."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    """The MRL model; FF-m models are the same encoder with dim=m and a single head."""
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: tuple[int, ...] = (0, 1, 2)
    """Every method is trained once per seed; tables give mean and spread (std) over seeds."""
    parallel: int = 2
    """Models trained at once (Ray tasks, one CPU thread each)."""
    k: int = 10
    max_queries: int | None = None
    """Evaluate on the first N test rows only."""
    probe_epochs: int = 10
    """Epochs of the linear probe fitted on each reduced FF-d representation."""
    ray: RayConfig = field(default_factory=RayConfig)
    targets: ReproduceTargets = field(default_factory=ReproduceTargets)
    results_name: str = "reproduce"
    """Files under docs/results/ are named <results_name>.{md,csv,json} and <results_name>_*.png."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_seeds(self.seeds)
        positive("parallel", self.parallel)
        positive("k", self.k)
        positive("max_queries", self.max_queries, allow_none=True)
        positive("probe_epochs", self.probe_epochs)
        check(self.model.head == "mrl", "model.head must be 'mrl': MRL-E is trained alongside it")
        check(self.data.val_fraction > 0, "data.val_fraction must be > 0: adaptive classification searches "
                                           "its thresholds on the held-out rows")
        check_results_name(self.results_name)


def model_jobs(cfg: ReproduceConfig, seed: int) -> dict[str, TrainJobConfig]:
    """The training config of every model of one seed: {"mrl", "mrl_e", "ff_<m>" for each size m}."""
    jobs = seed_jobs(cfg, seed)
    mrl = jobs.pop("mrl")
    return {"mrl": mrl, "mrl_e": dataclasses.replace(mrl, model=dataclasses.replace(cfg.model, head="mrl_e")), **jobs}


def train_and_embed(job_dict: dict[str, Any], out: str) -> dict[str, Any]:
    """Ray task: train one model in-process on one thread, save it with its train/test embeddings.

    Writes `out` (npz: z_train, z_test) and the model directory `<out>.model/` (safetensors + spec JSON,
    see `mrl.artifacts.model_files`).
    """
    job = from_dict(TrainJobConfig, job_dict)
    started = time.time()
    model = train_local(job, threads=1)
    arrays = {}
    for split in ("train", "test"):
        images, _ = load_split(job.data, job.model, split)
        arrays[split] = np.concatenate([embed_images(model, images[i:i + 1024]) for i in range(0, len(images), 1024)])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, z_train=arrays["train"], z_test=arrays["test"])
    save_model_dir(model, f"{out}.model")
    return {"path": out, "seconds": time.time() - started}


def run_models(cfg: ReproduceConfig, work: Path) -> dict[tuple[str, int], str]:
    """Train every (method, seed) model with at most `cfg.parallel` Ray tasks in flight; returns paths."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=0)(train_and_embed)
    todo = [(name, seed, job) for seed in cfg.seeds for name, job in model_jobs(cfg, seed).items()]
    pending, done = {}, {}
    started = time.time()
    while todo or pending:
        while todo and len(pending) < cfg.parallel:
            name, seed, job = todo.pop(0)
            ref = task.remote(to_dict(job), str(work / f"seed{seed}" / f"{name}.npz"))
            pending[ref] = (name, seed)
        ready, _ = ray.wait(list(pending), num_returns=1)
        name, seed = pending.pop(ready[0])
        info = ray.get(ready[0])
        done[(name, seed)] = info["path"]
        total = len(done) + len(pending) + len(todo)
        print(f"[reproduce] trained {len(done)}/{total}: {name} seed {seed} in {info['seconds']:.0f}s "
              f"({time.time() - started:.0f}s elapsed)", flush=True)
    return done


def _load(path: str):
    """The model (eval mode, never unpickled) and the train/test embeddings saved by `train_and_embed`."""
    arrays = np.load(path)
    return load_model_dir(f"{path}.model"), arrays["z_train"], arrays["z_test"]


def evaluate_seed(cfg: ReproduceConfig, paths: dict[tuple[str, int], str], seed: int, labels: dict[str, np.ndarray]
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows {method, seed, size, top1, nn1, map} for every method and size, and the adaptive curve of MRL."""
    sizes, k = cfg.model.sizes, cfg.k
    y_db, y_q = labels["train"], labels["test"][:cfg.max_queries]
    rows = []

    def add(method: str, m: int, top1: float, db: np.ndarray, q: np.ndarray) -> None:
        r = retrieval_at(db, y_db, q, y_q, m, k)  # prefix m of MRL; all of an m-d FF or reduced representation
        rows.append({"method": method, "seed": seed, "size": m, "top1": top1, "nn1": r["nn1"],
                     "map": r[f"map@{k}"]})

    for method in ("mrl", "mrl_e"):
        model, z_db, z_q = _load(paths[(method, seed)])
        z_q = z_q[:cfg.max_queries]
        for m, logits in zip(sizes, head_logits(model, z_q)):
            add(method, m, top1_accuracy(logits, y_q), z_db, z_q)
        if method == "mrl":
            _, val_idx = train_val_indices(len(y_db), cfg.data.val_fraction, cfg.data.seed)
            val_probs = [softmax(x) for x in head_logits(model, z_db[val_idx])]
            test_probs = [softmax(x) for x in head_logits(model, z_q)]
            curve = adaptive_curve(val_probs, y_db[val_idx], test_probs, y_q, sizes)
    for m in sizes:  # the loop ends holding FF-d (the largest size), whose reductions come next
        model, z_db, z_q = _load(paths[(f"ff_{m}", seed)])
        z_q = z_q[:cfg.max_queries]
        add("ff", m, top1_accuracy(head_logits(model, z_q)[0], y_q), z_db, z_q)
    pca = PCA.fit(z_db)
    for m in sizes:
        proj = gaussian_projection(z_db.shape[1], m, seed)
        for method, (db, q) in {"ff_first_m": (first_m(z_db, m), first_m(z_q, m)),
                                "ff_pca": (pca.transform(z_db, m), pca.transform(z_q, m)),
                                "ff_random_proj": (z_db @ proj, z_q @ proj)}.items():
            top1 = linear_probe_accuracy(db, y_db, q, y_q, cfg.model.num_classes, epochs=cfg.probe_epochs, seed=seed)
            add(method, m, top1, db, q)
    for point in curve:
        point["seed"] = seed
    return rows, curve


def run_reproduce(cfg: ReproduceConfig, results_dir: str | Path, command: str = "") -> dict[str, Any]:
    """Train, evaluate, aggregate, write results (Markdown, CSV, JSON, plots) and log them to MLflow."""
    import mlflow

    check_paths(cfg)  # before any Ray work
    ensure_ray(cfg.ray)
    tracking.setup(cfg.mlflow, cfg.output_dir)
    started = time.time()
    with mlflow.start_run(run_name=cfg.results_name, tags={"mrl.stage": "reproduce"}) as run:
        tracking.log_params(to_dict(cfg))
        work = Path(cfg.output_dir).resolve() / "reproduce" / run.info.run_id
        paths = run_models(cfg, work)
        train_seconds = time.time() - started
        labels = {split: load_split(cfg.data, cfg.model, split)[1] for split in ("train", "test")}
        rows, curves = [], []
        for seed in cfg.seeds:
            seed_rows, curve = evaluate_seed(cfg, paths, seed, labels)
            rows += seed_rows
            curves += curve
            print(f"[reproduce] evaluated seed {seed} ({time.time() - started:.0f}s elapsed)", flush=True)
        summary = aggregate(rows, METRICS)
        seconds = time.time() - started
        meta = {"config": to_dict(cfg), "command": command or "python benchmarks/reproduce.py", "seconds": round(seconds, 1), "train_seconds": round(train_seconds, 1),
                "mlflow_run_id": run.info.run_id}
        targets = check_targets(summary, curves, cfg.model.sizes, cfg.targets)
        out = Path(results_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = write_tables(out, cfg.results_name, summary, rows, curves, targets, meta)
        files.append(plot_sizes_by_method(summary, out / f"{cfg.results_name}_accuracy_vs_size.png"))
        files.append(plot_adaptive(summary, curves, out / f"{cfg.results_name}_adaptive.png"))
        for file in files:
            mlflow.log_artifact(str(file), artifact_path="results")
        mlflow.log_metrics({f"{r['method']}_{metric}_d{r['size']}": r[metric] for r in summary for metric in METRICS})
        mlflow.log_metric("wall_seconds", seconds)
    print((out / f"{cfg.results_name}.md").read_text(), flush=True)
    return {"summary": summary, "rows": rows, "curves": curves, "targets": targets, "seconds": seconds,
            "files": [str(f) for f in files], "run_id": run.info.run_id}
