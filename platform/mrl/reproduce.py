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
from pathlib import Path
from typing import Any

import numpy as np

from mrl.config import NestingConfig, ReproduceConfig, TrainJobConfig

METRICS = ("top1", "nn1", "map")
REDUCTIONS = ("ff_first_m", "ff_pca", "ff_random_proj")


def model_jobs(cfg: ReproduceConfig, seed: int) -> dict[str, TrainJobConfig]:
    """The training config of every model of one seed: {"mrl", "mrl_e", "ff_<m>" for each size m}."""
    base = TrainJobConfig(output_dir=cfg.output_dir, data=cfg.data, model=cfg.model,
                          train=dataclasses.replace(cfg.train, seed=seed), mlflow=cfg.mlflow)
    jobs = {"mrl": base, "mrl_e": dataclasses.replace(base, model=dataclasses.replace(cfg.model, head="mrl_e"))}
    for m in cfg.model.sizes:
        ff_model = dataclasses.replace(cfg.model, dim=m, nesting=NestingConfig(schedule="list", sizes=(m,)))
        jobs[f"ff_{m}"] = dataclasses.replace(base, model=ff_model)
    return jobs


def train_and_embed(job_dict: dict[str, Any], out: str) -> dict[str, Any]:
    """Ray task: train one model in-process on one thread, save it with its train/test embeddings."""
    import torch

    from mrl.configio import from_dict
    from mrl.data import load_split
    from mrl.embed import embed_images
    from mrl.train import train_local

    job = from_dict(TrainJobConfig, job_dict)
    started = time.time()
    model = train_local(job, threads=1)
    arrays = {}
    for split in ("train", "test"):
        images, _ = load_split(job.data, job.model, split)
        arrays[split] = np.concatenate([embed_images(model, images[i:i + 1024]) for i in range(0, len(images), 1024)])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, z_train=arrays["train"], z_test=arrays["test"])
    torch.save(model, f"{out}.model.pt")
    return {"path": out, "seconds": time.time() - started}


def run_models(cfg: ReproduceConfig, work: Path) -> dict[tuple[str, int], str]:
    """Train every (method, seed) model with at most `cfg.parallel` Ray tasks in flight; returns paths."""
    import ray

    from mrl.configio import to_dict

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
    import torch

    arrays = np.load(path)
    return torch.load(f"{path}.model.pt", weights_only=False).eval(), arrays["z_train"], arrays["z_test"]


def evaluate_seed(cfg: ReproduceConfig, paths: dict[tuple[str, int], str], seed: int, labels: dict[str, np.ndarray]
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows {method, seed, size, top1, nn1, map} for every method and size, and the adaptive curve of MRL."""
    from mrl.adaptive import adaptive_curve, softmax
    from mrl.baselines import PCA, first_m, gaussian_projection, linear_probe_accuracy
    from mrl.data import train_val_indices
    from mrl.evaluate import head_logits, retrieval_at
    from mrl.metrics import top1_accuracy

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


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (method, size)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["size"]), []).append(row)
    out = []
    for (method, size), group in groups.items():
        entry: dict[str, Any] = {"method": method, "size": size, "seeds": len(group)}
        for metric in METRICS:
            values = np.array([g[metric] for g in group])
            entry[metric] = float(values.mean())
            entry[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def run_reproduce(cfg: ReproduceConfig, results_dir: str | Path, command: str = "") -> dict[str, Any]:
    """Train, evaluate, aggregate, write results (Markdown, CSV, JSON, plots) and log them to MLflow."""
    import mlflow

    from mrl import tracking
    from mrl.configio import to_dict
    from mrl.data import load_split
    from mrl.report import check_targets, plot_adaptive, plot_sizes_by_method, write_tables
    from mrl.runtime import ensure_ray

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
        summary = aggregate(rows)
        seconds = time.time() - started
        meta = {"config": to_dict(cfg), "command": command or "python benchmarks/reproduce.py", "seconds": round(seconds, 1), "train_seconds": round(train_seconds, 1),
                "mlflow_run_id": run.info.run_id}
        targets = check_targets(summary, curves, cfg.model.sizes)
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
