"""The tune stage: a Ray Tune grid over nesting schedules and loss weights; each trial is a Ray Train run.

Each trial's driver function builds a TorchTrainer from the base training config plus the trial's choice
and passes Tune's `TuneReportCallback`, so per-epoch metrics of the workers reach Tune. After the sweep,
the driver records one MLflow parent run `tune` with a nested run per trial and the best config.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any

from mrl.config import NestingConfig, TrainJobConfig, TuneJobConfig
from mrl.configio import from_dict, to_dict


def grid(job: TuneJobConfig) -> list[dict[str, Any]]:
    """Every combination of the search space, as trial parameter dicts."""
    space = job.space
    lrs = space.lr or (job.base.train.lr,)
    return [{"schedule": s, "min_size": m, "smallest_weight": w, "lr": lr}
            for s, m, w, lr in itertools.product(space.schedules, space.min_sizes, space.smallest_weight, lrs)]


def trial_job(base: TrainJobConfig, params: dict[str, Any], run_name: str) -> TrainJobConfig:
    """The training config of one trial: base config with the trial's schedule, weights and lr."""
    nesting = NestingConfig(schedule=params["schedule"], min_size=params["min_size"], count=base.model.nesting.count)
    sizes = nesting.resolve(base.model.dim)
    weights = (params["smallest_weight"],) + (1.0,) * (len(sizes) - 1)
    model = dataclasses.replace(base.model, nesting=dataclasses.replace(nesting, weights=weights))
    train = dataclasses.replace(base.train, lr=params["lr"])
    return dataclasses.replace(base, model=model, train=train, run_name=run_name)


def _trial(config: dict[str, Any]) -> None:
    """Tune function trainable: fit one TorchTrainer and let TuneReportCallback forward its metrics."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from mrl.stages.train import fit

    base = from_dict(TrainJobConfig, config["base"])
    trial_id = ray.tune.get_context().get_trial_id()
    job = trial_job(base, config["params"], run_name=f"tune-trial-{trial_id}")
    result = fit(job, callbacks=[TuneReportCallback()])
    if result.error is not None:
        raise result.error


def run_tune(job: TuneJobConfig) -> dict[str, Any]:
    """Run the sweep and record it in MLflow.

    Returns:
        {"run_id", "best_params", "best_metric", "trials": [{"params", "metrics"}], "seconds"}.
    """
    import mlflow
    from ray import tune

    from mrl.artifacts import tracking
    from mrl.config import check_paths
    from mrl.runtime import ensure_ray

    check_paths(job)  # before any Ray work
    ensure_ray(job.base.ray)
    tracking.setup(job.mlflow, job.output_dir)
    base = dataclasses.replace(job.base, output_dir=job.output_dir, mlflow=job.mlflow)
    combos = grid(job)
    print(f"[tune] {len(combos)} combinations x {job.num_samples} sample(s), metric {job.metric} (max)", flush=True)
    started = time.time()
    tuner = tune.Tuner(
        _trial,
        param_space={"base": to_dict(base), "params": tune.grid_search(combos)},
        tune_config=tune.TuneConfig(metric=job.metric, mode="max", num_samples=job.num_samples,
                                    max_concurrent_trials=job.max_concurrent_trials),
        run_config=tune.RunConfig(name=f"tune-{int(started)}",
                                  storage_path=str(Path(job.output_dir).resolve() / "ray")),
    )
    results = tuner.fit()
    trials = []
    for result in results:
        metrics = {k: float(v) for k, v in (result.metrics or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        trials.append({"params": result.config["params"], "metrics": metrics,
                       "error": None if result.error is None else str(result.error)})
    done = [t for t in trials if job.metric in t["metrics"]]
    if not done:
        raise RuntimeError(f"no tune trial reported {job.metric}; errors: {[t['error'] for t in trials]}")
    best = max(done, key=lambda t: t["metrics"][job.metric])
    seconds = time.time() - started
    with mlflow.start_run(run_name="tune", tags={"mrl.stage": "tune"}) as parent:
        tracking.log_params({"base": to_dict(base), "space": to_dict(job.space), "metric": job.metric})
        for i, trial in enumerate(trials):
            with mlflow.start_run(run_name=f"trial-{i}", nested=True, tags={"mrl.stage": "tune-trial"}):
                mlflow.log_params(trial["params"])
                if trial["metrics"]:
                    mlflow.log_metrics({k: v for k, v in trial["metrics"].items()
                                        if k.startswith(("val_", "train_loss", "epoch"))})
                if trial["error"]:
                    mlflow.set_tag("error", trial["error"][:5000])
        mlflow.log_params({f"best.{k}": v for k, v in best["params"].items()})
        mlflow.log_metric(f"best_{job.metric}", best["metrics"][job.metric])
        mlflow.log_dict({"best": best, "trials": trials}, "tune_results.json")
    print(f"[tune] best {best['params']} -> {job.metric} = {best['metrics'][job.metric]:.4f} "
          f"({len(trials)} trials, {seconds:.0f}s)", flush=True)
    print(json.dumps(best["params"]), flush=True)
    return {"run_id": parent.info.run_id, "best_params": best["params"], "best_metric": best["metrics"][job.metric],
            "trials": trials, "seconds": seconds}
