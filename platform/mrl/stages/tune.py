"""The tune stage: Ray Tune over nesting schedules, per-size loss weights and lr (and, for text models, the InfoNCE
temperature and the sizes trained per step); each trial is a Ray Train run.

Each trial's driver function builds a TorchTrainer from the base training config plus the trial's choice
and passes Tune's `TuneReportCallback`, so the workers' per-epoch, per-size validation accuracy reaches Tune
(and ASHA, which stops lagging trials at its rungs). Trials are sampled from the grid, at random, or by
Optuna. The sweep's answer is a trade-off across sizes, not one number: the Pareto front of (accuracy at the
small deployed size, accuracy at d) over trials (validation top-1 for image models, pair R@10 on the held-out
validation pairs for text models), and the winner by the rule `full_tolerance` states. The
winner's training config is written as YAML (and, with `train_winner`, trained and registered). The driver
records one MLflow parent run `tune` with a nested run per trial, the front's plot and the winner.
A sweep named after an existing one resumes it.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any

from mrl.artifacts import tracking
from mrl.configio import from_dict, to_dict
from mrl.core.config import NestingConfig
from mrl.plots import pyplot
from mrl.stages import train as train_stage
from mrl.stages.config import TrainJobConfig, TuneJobConfig
from mrl.stages.stage import prepare
from mrl.stages.train import fit

def measure(job: TuneJobConfig) -> str:
    """What the sweep trades across sizes: validation top-1 for image models, pair R@10 on the held-out
    validation pairs for text models."""
    return "r10" if job.base.model.modality == "text" else "top1"


def measure_label(job: TuneJobConfig) -> str:
    return "pair R@10" if measure(job) == "r10" else "top-1"


def small_metric(job: TuneJobConfig) -> str:
    """The reported metric at the small deployed size (every trial trains that size)."""
    family = measure(job)
    return f"val_{family}_d{min(job.space.deploy_sizes)}" if job.space.deploy_sizes else f"val_{family}_min"


def full_metric(job: TuneJobConfig) -> str:
    """The reported metric at d."""
    return f"val_{measure(job)}_full"


def nesting_weights(sizes: list[int], dim: int, alpha: float, smallest_boost: float) -> list[float]:
    """c_m proportional to (m / d)^alpha, the smallest size's times `smallest_boost`, scaled to mean 1 (so the
    loss, hence the effective learning rate, keeps its scale across trials); rounded to 6 digits."""
    weights = [(m / dim) ** alpha for m in sizes]
    weights[0] *= smallest_boost
    mean = sum(weights) / len(weights)
    return [round(w / mean, 6) for w in weights]


def trial_job(base: TrainJobConfig, params: dict[str, Any], run_name: str,
              deploy_sizes: tuple[int, ...] = ()) -> TrainJobConfig:
    """The training config of one trial: the base config with the trial's nesting list (the schedule's sizes
    plus the deploy sizes and d), its weights, lr and, for text models, InfoNCE temperature (at d, and its power
    over the prefixes) and sizes trained per step (capped at the trial's nesting list)."""
    dim = base.model.dim
    scheduled = NestingConfig(schedule=params["schedule"], min_size=params["min_size"],
                              count=params.get("count", base.model.nesting.count)).resolve(dim)
    sizes = sorted(set(scheduled) | set(deploy_sizes) | {dim})
    weights = nesting_weights(sizes, dim, params.get("weight_alpha", 0.0), params["smallest_weight"])
    nesting = NestingConfig(schedule="list", sizes=tuple(sizes), weights=tuple(weights))
    model = dataclasses.replace(base.model, nesting=nesting)
    train = dataclasses.replace(base.train, lr=params.get("lr") or base.train.lr,
                                temperature=params.get("temperature") or base.train.temperature,
                                temperature_power=params.get("temperature_power", base.train.temperature_power),
                                sizes_per_step=min(len(sizes), params.get("sizes_per_step", base.train.sizes_per_step)))
    return dataclasses.replace(base, model=model, train=train, run_name=run_name)


def grid(job: TuneJobConfig) -> list[dict[str, Any]]:
    """Every combination of the listed values (the uniform schedule's counts only vary the uniform schedule)."""
    space = job.space
    train = job.base.train
    combos = []
    for schedule, min_size, w, alpha, lr, temperature, power, per_step in itertools.product(
            space.schedules, space.min_sizes, space.smallest_weight, space.weight_alpha, space.lr or (train.lr,),
            space.temperature or (train.temperature,), space.temperature_power or (train.temperature_power,),
            space.sizes_per_step or (train.sizes_per_step,)):
        for count in space.counts if schedule == "uniform" else space.counts[:1]:
            combos.append({"schedule": schedule, "min_size": min_size, "count": count, "smallest_weight": w,
                           "weight_alpha": alpha, "lr": lr, "temperature": temperature, "temperature_power": power,
                           "sizes_per_step": per_step})
    return combos


def param_space(job: TuneJobConfig) -> dict[str, Any]:
    """Tune's param space: a grid over `grid(job)`, or sampling distributions over the ranges."""
    from ray import tune

    if job.search.algorithm == "grid":
        return tune.grid_search(grid(job))
    space = job.space

    def span(values, log=False):
        lo, hi = min(values), max(values)
        return lo if lo == hi else (tune.loguniform(lo, hi) if log else tune.uniform(lo, hi))

    train = job.base.train
    return {"schedule": tune.choice(list(space.schedules)), "min_size": tune.choice(list(space.min_sizes)),
            "count": tune.choice(list(space.counts)), "smallest_weight": span(space.smallest_weight),
            "weight_alpha": span(space.weight_alpha), "lr": span(space.lr, log=True) if space.lr else train.lr,
            "temperature": span(space.temperature, log=True) if space.temperature else train.temperature,
            "temperature_power": span(space.temperature_power) if space.temperature_power else train.temperature_power,
            "sizes_per_step": (tune.choice(list(space.sizes_per_step)) if space.sizes_per_step
                               else train.sizes_per_step)}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indexes of the points (small, full) that no other point beats on both (>= on both, > on one)."""
    front = []
    for i, (s, f) in enumerate(points):
        if not any((s2 >= s and f2 >= f) and (s2 > s or f2 > f) for j, (s2, f2) in enumerate(points) if j != i):
            front.append(i)
    return front


def pick_winner(points: list[tuple[float, float]], full_tolerance: float) -> int:
    """The winner: the best small-size accuracy among points within `full_tolerance` of the best full-size
    accuracy (ties: the better full-size accuracy, then the earlier trial)."""
    best_full = max(f for _, f in points)
    eligible = [i for i, (_, f) in enumerate(points) if f >= best_full - full_tolerance - 1e-12]
    return max(eligible, key=lambda i: (points[i][0], points[i][1], -i))


def plot_front(trials: list[dict[str, Any]], front: list[int], winner: int, small: str, full: str, label: str,
               path: Path, tolerance: float) -> Path:
    """Small-size against full-size validation `label` (top-1, pair R@10) per trial, the Pareto front joined, the
    winner ringed."""

    plt = pyplot()
    xs = [100 * t["metrics"][small] for t in trials]
    ys = [100 * t["metrics"][full] for t in trials]
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    ax.scatter(xs, ys, s=22, color="grey", label="trials")
    order = sorted(front, key=lambda i: xs[i])
    ax.plot([xs[i] for i in order], [ys[i] for i in order], "o-", color="tab:blue", label="Pareto front")
    ax.scatter([xs[winner]], [ys[winner]], s=140, facecolors="none", edgecolors="tab:red", linewidths=2,
               label=f"winner (best small size within {100 * tolerance:g} pt of best full)")
    ax.axhline(max(ys) - 100 * tolerance, color="tab:red", lw=0.8, ls="--")
    ax.set_xlabel(f"validation {label} at the small size ({small}), %")
    ax.set_ylabel(f"validation {label} at d ({full}), %")
    ax.set_title("MRL sweep: accuracy at the deployed size against full size", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _trial(config: dict[str, Any]) -> None:
    """Tune function trainable: fit one TorchTrainer and let TuneReportCallback forward its metrics."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    base = from_dict(TrainJobConfig, config["base"])
    trial_id = ray.tune.get_context().get_trial_id()
    job = trial_job(base, config["params"], f"tune-trial-{trial_id}", tuple(config.get("deploy_sizes", ())))
    result = fit(job, callbacks=[TuneReportCallback()])
    if result.error is not None:
        raise result.error


def trial_progress(job: TuneJobConfig):
    """A Tune callback that prints one line as each trial ends: its params, the sweep's two objectives, the epochs
    it ran (fewer: ASHA stopped it) or its error."""
    from ray.tune import Callback

    small, full = small_metric(job), full_metric(job)
    planned = job.search.num_samples if job.search.algorithm != "grid" else job.search.num_samples * len(grid(job))

    class TrialProgress(Callback):
        ended = 0

        def _line(self, trial, outcome: str) -> None:
            self.ended += 1
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in trial.config["params"].items())
            print(f"[tune] trial {self.ended}/{planned} {outcome}: {params}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info):
            last = trial.last_result or {}
            scores = (f"{small} {100 * last[small]:.2f}%, {full} {100 * last[full]:.2f}%, "
                      if small in last and full in last else "")
            self._line(trial, f"{scores}{last.get('epoch', 0)} epoch(s)")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "failed (see the log)")

    return TrialProgress()


def make_tuner(job: TuneJobConfig, base: TrainJobConfig, name: str, storage: Path):
    """A new Tuner for the sweep, or the restored one when `storage/name` holds an interrupted sweep."""
    from ray import tune

    path = storage / name
    if tune.Tuner.can_restore(str(path)):
        print(f"[tune] resuming sweep {name!r} from {path}", flush=True)
        return tune.Tuner.restore(str(path), trainable=_trial, resume_errored=True)
    search_alg, scheduler = None, None
    if job.search.algorithm == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # its own limit: Tune ignores max_concurrent_trials for a generator given as search_alg, and starting every
        # trial at once can leave no CPU for any trial's Train workers (each waits for the others: a hang)
        search_alg = BasicVariantGenerator(random_state=job.search.seed, max_concurrent=job.max_concurrent_trials)
    elif job.search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=job.search.seed)
    if job.search.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="epoch", max_t=base.train.epochs, grace_period=job.search.grace_period,
                                  reduction_factor=job.search.reduction_factor)
    return tune.Tuner(
        _trial,
        param_space={"base": to_dict(base), "deploy_sizes": list(job.space.deploy_sizes),
                     "params": param_space(job)},
        tune_config=tune.TuneConfig(metric=small_metric(job), mode="max", num_samples=job.search.num_samples,
                                    max_concurrent_trials=job.max_concurrent_trials, search_alg=search_alg,
                                    scheduler=scheduler),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), callbacks=[trial_progress(job)],
                                  failure_config=tune.FailureConfig(max_failures=job.max_failures),
                                  # Tune's trial tables only with log_level=debug: the stage prints its own lines
                                  verbose=0 if job.log_level == "info" else None),
    )


def run(job: TuneJobConfig) -> dict[str, Any]:
    """Run (or resume) the sweep, pick the winner, write its config, record everything in MLflow.

    Returns:
        {"run_id", "sweep", "trials": [{"params", "metrics", "epochs", "error"}], "front", "winner",
         "winner_yaml", "winner_model_uri" (with train_winner), "seconds"}.
    """
    # the trials' base job, prepared once here as every stage's job is (paths, data shards, Ray), not by
    # concurrent trials
    base = prepare(dataclasses.replace(job.base, output_dir=job.output_dir, artifacts_dir=job.artifacts_dir,
                                       mlflow=job.mlflow))
    tracking.setup(job.mlflow, job.output_dir)
    name = job.sweep_name or time.strftime("tune-%Y%m%d-%H%M%S")
    small, full = small_metric(job), full_metric(job)
    print(f"[tune] sweep {name!r}: {job.search.algorithm} search, {job.search.scheduler} scheduler, objectives "
          f"{small} and {full}", flush=True)
    started = time.time()
    trials = collect_trials(make_tuner(job, base, name, Path(job.output_dir).resolve() / "ray").fit())
    done = [t for t in trials if small in t["metrics"] and full in t["metrics"]]
    if not done:
        raise RuntimeError(f"no tune trial reported {small}; errors: {[t['error'] for t in trials]}")
    points = [(t["metrics"][small], t["metrics"][full]) for t in done]
    front, winner = pareto_front(points), pick_winner(points, job.full_tolerance)
    best = done[winner]
    stopped = sum(t["epochs"] < base.train.epochs for t in done)
    print(f"[tune] {len(trials)} trials ({stopped} stopped early); Pareto front {len(front)} trials; winner "
          f"{best['params']}: {small} {points[winner][0]:.4f}, {full} {points[winner][1]:.4f}", flush=True)
    out = Path(job.output_dir).resolve() / "tune" / name
    out.mkdir(parents=True, exist_ok=True)
    winner_job, winner_yaml = write_winner(job, base, best["params"], name, out,
                                           f"{small} {points[winner][0]:.4f}, {full} {points[winner][1]:.4f}")
    plot = plot_front(done, front, winner, small, full, measure_label(job), out / "pareto.png", job.full_tolerance)
    seconds = time.time() - started
    run_id = log_sweep(job, base, name, trials, [done[i] for i in front], best, [plot, winner_yaml], {
        f"best_{small}": points[winner][0], f"best_{full}": points[winner][1],
        "trials_stopped_early": stopped, "tune_wall_seconds": seconds})
    summary = {"run_id": run_id, "sweep": name, "trials": trials, "front": [done[i] for i in front],
               "winner": best, "winner_yaml": str(winner_yaml), "small_metric": small, "full_metric": full,
               "seconds": seconds}
    if job.train_winner:
        summary["winner_model_uri"] = train_stage.run(winner_job)["model_uri"]
    print(f"[tune] winner config: {winner_yaml}; front plot: {plot} ({seconds:.0f}s)", flush=True)
    return summary


def collect_trials(results) -> list[dict[str, Any]]:
    """Each trial of a Tune ResultGrid: its params, numeric metrics, epochs reached and error (None)."""
    trials = []
    for result in results:
        metrics = {k: float(v) for k, v in (result.metrics or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        trials.append({"params": result.config["params"], "metrics": metrics, "epochs": int(metrics.get("epoch", 0)),
                       "error": None if result.error is None else str(result.error)})
    return trials


def write_winner(job: TuneJobConfig, base: TrainJobConfig, params: dict[str, Any], name: str, out: Path,
                 scores: str) -> tuple[TrainJobConfig, Path]:
    """The winner's training config (winner_epochs, else base's), written as <out>/winner.yaml, ready to run."""
    import yaml

    winner_train = dataclasses.replace(base.train, epochs=job.winner_epochs or base.train.epochs)
    winner_job = trial_job(dataclasses.replace(base, train=winner_train), params, f"{name}-winner",
                           job.space.deploy_sizes)
    path = out / "winner.yaml"
    path.write_text(f"# The winner of sweep {name!r} ({scores}).\n#\n#   python jobs/train.py --config {path}\n#\n"
                    + yaml.safe_dump(to_dict(winner_job), sort_keys=False))
    return winner_job, path


def log_sweep(job: TuneJobConfig, base: TrainJobConfig, name: str, trials: list[dict[str, Any]],
              front: list[dict[str, Any]], best: dict[str, Any], files: list[Path], metrics: dict[str, float]) -> str:
    """One MLflow parent run `tune` with a nested run per trial, the winner, the front and `files`; its id."""
    import mlflow

    with mlflow.start_run(run_name="tune", tags={tracking.TAG_STAGE: "tune", tracking.TAG_SWEEP: name}) as parent:
        tracking.log_params({"base": to_dict(base), "space": to_dict(job.space), "search": to_dict(job.search),
                             "full_tolerance": job.full_tolerance})
        for i, trial in enumerate(trials):
            with mlflow.start_run(run_name=f"trial-{i}", nested=True, tags={tracking.TAG_STAGE: "tune-trial"}):
                mlflow.log_params(trial["params"])
                if trial["metrics"]:
                    mlflow.log_metrics({k: v for k, v in trial["metrics"].items()
                                        if k.startswith(("val_", "train_loss", "epoch"))})
                if trial["error"]:
                    mlflow.set_tag("error", trial["error"][:5000])
        mlflow.log_params({f"best.{k}": v for k, v in best["params"].items()})
        mlflow.log_metrics(metrics)
        mlflow.log_dict({"winner": best, "front": front, "trials": trials}, "tune_results.json")
        for file in files:
            mlflow.log_artifact(str(file))
    return parent.info.run_id
