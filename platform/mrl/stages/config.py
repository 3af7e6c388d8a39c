"""Every job's config, composed here from the sections the packages own (`DataConfig` from `mrl.data`,
`ModelConfig` from `mrl.core`, `IndexConfig` from `mrl.retrieval`, `ServeConfig` from `mrl.service`,
`MlflowConfig` from `mrl.artifacts`) and the stages' own (training, resources, Ray, embedding, evaluation,
sweeps). A job config checks its fields when built, before any Ray work; `check_paths` checks the paths a job
reads when it starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mrl import storage
from mrl.artifacts.config import MlflowConfig
from mrl.artifacts.index import check_index_config, planned_codes, planned_sources
from mrl.configio import ConfigError, check, positive, registered
from mrl.core.config import ModelConfig, NestingConfig
from mrl.core.losses import LOSSES, prefix_temperatures
from mrl.data.config import DataConfig
from mrl.data.sources import check_data_paths
from mrl.retrieval.config import IndexConfig
from mrl.retrieval.modes import check_settings
from mrl.runtime import LOG_LEVELS
from mrl.service.config import ServeConfig


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation; the same hyper-parameters serve FF, MRL and MRL-E (MRL is a drop-in loss)."""

    epochs: int = 3
    batch_size: int = 128
    """Per-worker batch size."""
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "constant"] = "cosine"
    loss: str = "cross_entropy"
    """Per-size classification loss, a name in `mrl.core.losses.LOSSES` (summed over the nesting sizes with
    their weights). Text models are trained contrastively instead (in-batch InfoNCE on every prefix)."""
    temperature: float = 0.05
    """Text models: InfoNCE temperature of the contrastive Matryoshka loss, in (0, 1] (at d, with
    temperature_power)."""
    temperature_power: float = 0.0
    """Text models: prefix m's temperature is temperature * (d / m) ** temperature_power, in [0, 2]; > 0 gives
    the small prefixes softer logits than d's (0: one temperature for every size)."""
    negatives: Literal["global", "local"] = "global"
    """Text models with several workers: global: every worker's batch is a negative for every query (all-gather,
    the gradient reaching each worker's own part), so W workers of batch B train as one worker of batch W*B;
    local: each worker's own batch only."""
    sizes_per_step: int = 0
    """Text models: nesting sizes each step trains, drawn anew every step (seeded by train.seed, the epoch and
    the step, so every worker and a resumed run draw the same) and summed with their nesting weights; the other
    sizes skip that step's loss (cheaper with long nesting lists). 0: every size every step."""
    full_size_every_step: bool = True
    """With sizes_per_step: d is always one of the drawn sizes."""
    seed: int = 0
    shuffle_buffer: int = 4096
    """Image models: rows each worker gathers from its stream and shuffles (seeded per epoch) before cutting them
    into batches, on top of the read blocks' seeded order; more mixes better and holds more memory."""
    cache_blocks: Literal["auto", "always", "never"] = "auto"
    """Image models: keep the training part's decoded blocks in Ray's object store after one read, so epochs
    read nothing from the source. auto: when they take at most a quarter of the cluster's object store
    (Fashion-MNIST does, ImageNet does not); never: every epoch streams from the source."""

    def __post_init__(self) -> None:
        registered("loss", self.loss, LOSSES)
        check(0 < self.temperature <= 1, f"temperature must be in (0, 1], got {self.temperature}")
        check(self.sizes_per_step >= 0, f"sizes_per_step must be >= 0 (0: every size), got {self.sizes_per_step}")
        check(0 <= self.temperature_power <= 2, f"temperature_power must be in [0, 2], got {self.temperature_power}")
        positive("epochs", self.epochs)
        positive("batch_size", self.batch_size)
        positive("shuffle_buffer", self.shuffle_buffer)
        check(0 < self.lr < 10, f"lr must be in (0, 10), got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass(frozen=True, kw_only=True)
class ResourcesConfig:
    """How Ray Train places the work."""

    num_workers: int = 2
    """Ray Train workers (data parallel), >= 1."""
    use_gpu: bool | Literal["auto"] = "auto"
    """auto: GPUs when the Ray cluster has any (NCCL), else CPU workers with gloo."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on CUDA, fp32 on CPU."""
    cpus_per_worker: int = 1
    threads_per_worker: int | None = None
    """torch intra-op threads per worker; default = cpus_per_worker."""
    max_failures: int = 0
    """Worker/node failures tolerated; training restarts from the latest checkpoint."""

    def __post_init__(self) -> None:
        check(self.num_workers >= 1, f"num_workers must be >= 1, got {self.num_workers}")
        positive("cpus_per_worker", self.cpus_per_worker)
        positive("threads_per_worker", self.threads_per_worker, allow_none=True)
        check(self.max_failures >= -1, f"max_failures must be >= -1, got {self.max_failures}")


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Which Ray cluster to use."""

    address: str | None = None
    """None: the cluster in RAY_ADDRESS (as under `ray job submit`) or a new local one; else e.g. 'auto'."""
    num_cpus: int | None = 8
    """Logical CPUs of a new local cluster. More than the cores, so Train workers never starve Ray Data."""

    def __post_init__(self) -> None:
        positive("num_cpus", self.num_cpus, allow_none=True)


@dataclass(frozen=True, kw_only=True)
class EmbedConfig:
    """Batch embedding with Ray Data."""

    splits: tuple[Literal["train", "test"], ...] = ("train", "test")
    batch_size: int = 512
    num_actors: int = 2
    """Size of the Ray Data actor pool; each actor loads the model once."""
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    rows_per_file: int = 20000
    """Rows per unit of work: an actor embeds a unit and writes it as one Parquet file (atomically), and a
    resumed run skips the units already written."""
    dtype: Literal["float32", "float16"] = "float32"
    """Stored vector type; float16 halves the shards (1M x 2048: 4 GB instead of 8)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Inference precision: auto = bfloat16 weights (and channels_last) on a GPU, float32 on a CPU; bf16
    needs GPU actors (gpus_per_actor > 0)."""
    augment_rows: int | None = None
    """Grow the train split to this many rows with deterministic augmented copies (shift, flip, contrast,
    erasing; see mrl.data.augment) to build a large retrieval database; ids below the split's size are originals."""
    augment_seed: int = 0

    def __post_init__(self) -> None:
        check(len(self.splits) > 0, "splits must name at least one of ['train', 'test']")
        positive("augment_rows", self.augment_rows, allow_none=True)
        check(self.augment_seed >= 0, f"augment_seed must be >= 0, got {self.augment_seed}")
        positive("batch_size", self.batch_size)
        positive("num_actors", self.num_actors)
        positive("cpus_per_actor", self.cpus_per_actor)
        check(self.gpus_per_actor >= 0, f"gpus_per_actor must be >= 0, got {self.gpus_per_actor}")
        positive("rows_per_file", self.rows_per_file)
        check(self.precision != "bf16" or self.gpus_per_actor > 0,
               "precision bf16 needs GPU actors: set gpus_per_actor > 0, or precision auto / fp32")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Per-size evaluation: linear top-1 from the model's heads, 1-NN and mAP@k by retrieval."""

    k: int = 10
    max_queries: int | None = None
    """Evaluate on the first N test rows only (quick runs)."""

    def __post_init__(self) -> None:
        positive("k", self.k)
        positive("max_queries", self.max_queries, allow_none=True)


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """What every job config has: where its outputs go and where MLflow records them."""

    output_dir: str = "outputs"
    """A local directory: the run's logs, the sqlite MLflow store, caches and reports, and the stages' artifacts
    unless `artifacts_dir` puts them elsewhere. On a multi-node cluster without artifacts_dir: a path every node
    sees (NFS)."""
    artifacts_dir: str | None = None
    """Where the stages' artifacts go: converted data (data/), Ray Train checkpoints (ray/), embeddings/ and
    index/. A local path, or object storage every node reads: s3://bucket/prefix, gs://bucket/prefix
    (credentials and endpoint from the environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a role,
    AWS_ENDPOINT_URL; never in a config). None: output_dir."""
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    log_level: Literal["info", "debug"] = "info"
    """What a run prints (`mrl.runtime.captured_output`). info: the platform's own lines (progress, tables, where
    things are) and actionable warnings; the rest of Ray's, MLflow's and the workers' output goes to
    <output_dir>/logs/<stage>-<time>.log. debug: everything, as it comes (`--verbose` on the command line)."""

    def __post_init__(self) -> None:
        check(bool(self.output_dir), "output_dir must be a non-empty path")
        check(not storage.is_remote(self.output_dir),
               f"output_dir {self.output_dir!r} must be a local directory (logs, the sqlite MLflow store, caches); "
               "put the stages' artifacts in object storage with artifacts_dir")
        check_location("artifacts_dir", self.artifacts_dir)
        check(self.log_level in LOG_LEVELS, f"log_level {self.log_level!r} is not accepted; choose one of "
                                            f"{list(LOG_LEVELS)}")

    @property
    def artifacts(self) -> str:
        """Where the stages' artifacts go: artifacts_dir, else output_dir."""
        return self.artifacts_dir or self.output_dir

    def _default(self, name: str, stage_dir: str, location: bool = True) -> None:
        """Field `name` left None points at the newest output of a stage: <artifacts>/<stage_dir>/latest; a
        given one must be a local path or an accepted URI (unless `location` is False: it may be a URL or a
        model URI too)."""
        if getattr(self, name) is None:
            object.__setattr__(self, name, storage.join(self.artifacts, stage_dir, "latest"))
        if location:
            check_location(name, getattr(self, name))


@dataclass(frozen=True, kw_only=True)
class TrainJobConfig(JobConfig):
    """jobs/train.py"""

    run_name: str | None = None
    """Ray Train run name. None: a new name per invocation (train-<time>). Naming a run that exists under
    output_dir resumes it from its latest checkpoint (e.g. after a crash, or with more train.epochs)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    storage_path: str | None = None
    """Where Ray Train keeps the run's checkpoints. None: <artifacts_dir or output_dir>/ray. On several nodes,
    storage every node sees: a shared path, or a URI of pyarrow's filesystem layer (s3://bucket/prefix, gs://...,
    file:///mnt/...)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_modalities(self.data, self.model)
        check_text_loss(self.train, self.model)
        check(self.storage_path is None or bool(self.storage_path.strip()),
               "storage_path must be a path or URI, or null for <artifacts_dir or output_dir>/ray")
        check_location("storage_path", self.storage_path)


@dataclass(frozen=True, kw_only=True)
class EmbedJobConfig(JobConfig):
    """jobs/embed.py"""

    model_uri: str = "models:/mrl-fashion-mnist@champion"
    """An MLflow model URI (models:/name/version, models:/name@alias, models:/name/latest, runs:/id/model).
    The default is the promoted model: the first registered version, then whichever `mrl promote` names."""
    run_name: str | None = None
    """Output directory name under <output_dir>/embeddings. None: the MLflow run id (a new directory per
    invocation). Naming a run that exists resumes it: units already written and verified are skipped (the
    settings must be the same; a changed model, data or embed setting is refused)."""
    data: DataConfig = field(default_factory=DataConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass(frozen=True, kw_only=True)
class IndexJobConfig(JobConfig):
    """jobs/index.py"""

    embeddings: str | None = None
    """Directory written by the embed stage (holds manifest.json and <split>/*.parquet); None: the newest one,
    <output_dir>/embeddings/latest."""
    index: IndexConfig = field(default_factory=IndexConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._default("embeddings", "embeddings")


@dataclass(frozen=True, kw_only=True)
class EvaluateJobConfig(JobConfig):
    """jobs/evaluate.py"""

    embeddings: str | None = None
    """Directory written by the embed stage (train and test splits); None: <output_dir>/embeddings/latest."""
    evaluate: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._default("embeddings", "embeddings")


@dataclass(frozen=True, kw_only=True)
class ServeJobConfig(JobConfig):
    """serving/app.py"""

    index_dir: str | None = None
    """Directory written by the index stage (holds manifest.json); None: <output_dir>/index/latest."""
    serve: ServeConfig = field(default_factory=ServeConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    block: bool = True
    """Keep serving until interrupted (False: deploy and return)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._default("index_dir", "index")


@dataclass(frozen=True, kw_only=True)
class SearchJobConfig:
    """mrl search: query an index from the command line, through the service's own code (no Ray, no HTTP)."""

    index_dir: str = "outputs/index/latest"
    """Directory written by the index stage."""
    serve: ServeConfig = field(default_factory=ServeConfig)
    """The search settings (only the search fields matter here)."""
    ids: tuple[int, ...] = (0,)
    """Corpus ids to use as queries (each query returns the item itself first)."""
    mode: str | None = None
    """Search mode; None: serve.mode."""
    k: int | None = None
    """Results per query; None: serve.default_k."""


@dataclass(frozen=True, kw_only=True)
class LineageJobConfig(JobConfig):
    """mrl lineage: print the chain from a deployment, index, embeddings directory or model down to the data."""

    target: str | None = None
    """A running service's URL (http://...), an index or embeddings directory, or a model URI (models:/...);
    None: the newest index, <output_dir>/index/latest."""
    api_key_env: str | None = None
    """Name of an environment variable holding the service's API key (what its serve.api_key_env or
    serve.api_key_file holds), sent as `Authorization: Bearer <key>`: a service with a key tells only its key's
    holders which index and model it serves. None: no key sent."""
    rehash: bool = True
    """Read every file of the training data again to check its digest. false: trust the file-digest cache of
    <output_dir>/cache for files whose path, size, mtime, inode and ctime did not move (faster on a large image
    folder, blind to a change that kept all five)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._default("target", "index", location=False)
        check(bool(self.target), "target must name a URL, a directory or a model URI")
        check(self.api_key_env is None or bool(self.api_key_env.strip()), "api_key_env must name a variable")


@dataclass(frozen=True, kw_only=True)
class PromoteJobConfig(JobConfig):
    """mrl promote: point a registry alias (default champion, what the embed stage loads) at a model version."""

    model_uri: str = ""
    """models:/name/version (or another alias) to promote."""
    alias: str = "champion"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.model_uri.startswith("models:/"),
               f"model_uri must be a registered model version such as models:/mrl-fashion-mnist/3, got "
               f"{self.model_uri!r}")
        check(bool(self.alias) and self.alias.replace("-", "").replace("_", "").isalnum(),
               f"alias must be a name of letters, digits, - and _, got {self.alias!r}")


@dataclass(frozen=True, kw_only=True)
class TuneSpace:
    """The search space over what MRL exposes; each trial is one training run.

    Lists of choices (schedules, min_sizes, counts) are sampled as choices. Numeric families (smallest_weight,
    weight_alpha, lr) are the values themselves for the grid search, and the range [first, last] for the
    random and Optuna searches (lr log-uniform).
    """

    schedules: tuple[Literal["log", "uniform"], ...] = ("log", "uniform")
    min_sizes: tuple[int, ...] = (8,)
    counts: tuple[int, ...] = (8,)
    """Number of sizes of the uniform schedule (the log schedule ignores it)."""
    smallest_weight: tuple[float, ...] = (1.0, 2.0)
    """Boost of the smallest size's c_m (the paper's boosting ablation)."""
    weight_alpha: tuple[float, ...] = (0.0,)
    """Weights c_m proportional to (m / d)^alpha before the boost: 0 = equal, < 0 favours the small sizes."""
    lr: tuple[float, ...] = ()
    """Learning rates; empty keeps base.train.lr."""
    deploy_sizes: tuple[int, ...] = ()
    """Sizes you will deploy: added to every trial's nesting list, and the smallest of them is the size whose
    accuracy the sweep trades against full-size accuracy (empty: each trial's own smallest size)."""
    temperature: tuple[float, ...] = ()
    """Text models: InfoNCE temperatures (grid: the values; random / optuna: the log range); empty keeps
    base.train.temperature."""
    temperature_power: tuple[float, ...] = ()
    """Text models: train.temperature_power, each prefix's temperature relative to d's (grid: the values; random /
    optuna: the range); empty keeps base.train.temperature_power."""
    sizes_per_step: tuple[int, ...] = ()
    """Text models: nesting sizes trained per step (train.sizes_per_step; 0: all), sampled as choices; empty keeps
    base.train.sizes_per_step."""

    def __post_init__(self) -> None:
        check(len(self.schedules) > 0, "schedules must list at least one of ['log', 'uniform']")
        for name in ("min_sizes", "counts"):
            values = getattr(self, name)
            check(len(values) > 0 and all(v >= 1 for v in values),
                   f"{name} must be a non-empty list of integers >= 1, got {list(values)}")
        check(len(self.smallest_weight) > 0 and all(math.isfinite(w) and w > 0 for w in self.smallest_weight),
               f"smallest_weight must be a non-empty list of numbers > 0, got {list(self.smallest_weight)}")
        check(len(self.weight_alpha) > 0 and all(-4 <= a <= 4 for a in self.weight_alpha),
               f"weight_alpha must be a non-empty list of numbers in [-4, 4], got {list(self.weight_alpha)}")
        check(all(0 < x < 10 for x in self.lr), f"lr values must be in (0, 10), got {list(self.lr)}")
        check(all(m >= 1 for m in self.deploy_sizes), f"deploy_sizes must be >= 1, got {list(self.deploy_sizes)}")
        check(all(0 < t <= 1 for t in self.temperature), f"temperature values must be in (0, 1], got "
                                                          f"{list(self.temperature)}")
        check(all(0 <= p <= 2 for p in self.temperature_power), f"temperature_power values must be in [0, 2], got "
                                                                 f"{list(self.temperature_power)}")
        check(all(n >= 0 for n in self.sizes_per_step), f"sizes_per_step values must be >= 0 (0: all), got "
                                                        f"{list(self.sizes_per_step)}")


@dataclass(frozen=True, kw_only=True)
class TuneSearch:
    """How trials are sampled and stopped."""

    algorithm: Literal["grid", "random", "optuna"] = "grid"
    """grid: every combination of the listed values; random: Tune's random sampling of the ranges; optuna:
    Optuna's TPE sampler through ray.tune.search.optuna."""
    num_samples: int = 1
    """grid: repeats of the whole grid; random / optuna: the number of trials."""
    seed: int = 0
    scheduler: Literal["fifo", "asha"] = "fifo"
    """fifo: every trial runs all its epochs; asha: ASHA stops trials whose small-size accuracy lags at its rungs."""
    grace_period: int = 1
    """ASHA: epochs every trial runs before it may be stopped."""
    reduction_factor: int = 2
    """ASHA: 1 / the share of trials promoted at each rung."""

    def __post_init__(self) -> None:
        positive("num_samples", self.num_samples)
        positive("grace_period", self.grace_period)
        check(self.reduction_factor >= 2, f"reduction_factor must be >= 2, got {self.reduction_factor}")


@dataclass(frozen=True, kw_only=True)
class TuneJobConfig(JobConfig):
    """tuning/tune.py"""

    base: TrainJobConfig = field(default_factory=TrainJobConfig)
    """The training run every trial starts from (its output_dir, artifacts_dir and mlflow are replaced by the
    sweep's)."""
    space: TuneSpace = field(default_factory=TuneSpace)
    search: TuneSearch = field(default_factory=TuneSearch)
    max_concurrent_trials: int = 1
    full_tolerance: float = 0.003
    """The rule that picks the winner: the best small-size accuracy among the trials whose full-size accuracy
    is within this (0.003 = 0.3 points) of the best full-size accuracy of the sweep."""
    sweep_name: str | None = None
    """Ray Tune experiment name under <output_dir>/ray. None: tune-<time>. Naming a sweep that exists resumes
    it: finished trials are kept, unfinished and errored ones run again."""
    max_failures: int = 1
    """Times a trial is retried after its worker or node dies (Tune's FailureConfig); a retried trial resumes
    from its last Ray Train checkpoint."""
    winner_epochs: int | None = None
    """Epochs of the winner's training config (written as winner.yaml); None: base.train.epochs."""
    train_winner: bool = False
    """After the sweep, train the winner's config with the full budget and register it in MLflow."""

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("max_concurrent_trials", self.max_concurrent_trials)
        check(self.max_failures >= 0, f"max_failures must be >= 0, got {self.max_failures}")
        positive("winner_epochs", self.winner_epochs, allow_none=True)
        check(0 <= self.full_tolerance < 1, f"full_tolerance must be in [0, 1), got {self.full_tolerance}")
        dim = self.base.model.dim
        too_big = [m for m in self.space.deploy_sizes if m > dim]
        check(not too_big, f"space.deploy_sizes {too_big} go above base.model.dim {dim}")
        text_only = [name for name in ("temperature", "temperature_power", "sizes_per_step")
                     if getattr(self.space, name)]
        check(not text_only or self.base.model.modality == "text",
               f"space.{text_only[0] if text_only else ''} searches a text model's contrastive loss, but "
               f"base.model.encoder {self.base.model.encoder!r} is an image encoder (leave it empty)")
        self._check_temperatures()
        check(self.search.scheduler != "asha" or self.search.grace_period <= self.base.train.epochs,
               f"search.grace_period {self.search.grace_period} is more than base.train.epochs "
               f"{self.base.train.epochs}: ASHA could stop nothing")
        for schedule in self.space.schedules:  # every combination must be a valid nesting list
            for min_size in self.space.min_sizes:
                for count in (self.space.counts if schedule == "uniform" else self.space.counts[:1]):
                    try:
                        NestingConfig(schedule=schedule, min_size=min_size, count=count).resolve(dim)
                    except ConfigError as exc:
                        raise ConfigError(f"space (schedule {schedule!r}, min_size {min_size}, count {count}) with "
                                          f"base.model: {exc}") from None

    def _check_temperatures(self) -> None:
        """Every trial's prefixes get a temperature of at most 1: the hottest is the largest temperature at the
        smallest size a trial can train, with the largest power."""
        space, train = self.space, self.base.train
        if not space.temperature_power:
            return
        smallest = min([*space.min_sizes, *space.deploy_sizes, self.base.model.dim])
        hottest = prefix_temperatures([smallest, self.base.model.dim], max(space.temperature or (train.temperature,)),
                                      max(space.temperature_power))[0]
        check(hottest <= 1, f"space.temperature_power up to {max(space.temperature_power)} gives size {smallest} the "
                            f"temperature {hottest:.3g}; every prefix's must be at most 1: lower the powers or "
                            "space.temperature")


@dataclass(frozen=True, kw_only=True)
class PipelineConfig(JobConfig):
    """jobs/pipeline.py: train -> embed -> index -> evaluate -> serve, on one Ray cluster."""

    run_name: str | None = None
    """The training run's name (see TrainJobConfig.run_name)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    keep_serving: bool = False
    """After the example query, keep the service up until Ctrl-C."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_modalities(self.data, self.model)
        check_text_loss(self.train, self.model)
        # The same rules the index stage and the service apply to the real artifacts, applied to the
        # index this pipeline will build (model.dim, its sizes and AdANNS cells).

        try:
            sizes = check_index_config(self.index, self.model.dim, self.model.sizes)
            check_settings(self.serve.search, self.serve.mode,
                           planned_sources(sizes, self.index.adanns_size), self.model.dim, self.serve.default_k,
                           planned_codes(self.index.codes))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def train_job(self) -> TrainJobConfig:
        return TrainJobConfig(output_dir=self.output_dir, artifacts_dir=self.artifacts_dir, run_name=self.run_name,
                              data=self.data, model=self.model,
                              train=self.train, resources=self.resources, ray=self.ray, mlflow=self.mlflow,
                              log_level=self.log_level)


def check_modalities(data: DataConfig, model: ModelConfig, prefix: str = "") -> None:
    """A text encoder needs a text source and an image encoder an image source."""
    check(data.modality == model.modality,
           f"{prefix}data.source {data.source!r} is {data.modality} data but {prefix}model.encoder "
           f"{model.encoder!r} is a{'n' if model.modality == 'image' else ''} {model.modality} encoder")


def check_text_loss(train: TrainConfig, model: ModelConfig, prefix: str = "") -> None:
    """train.sizes_per_step and train.temperature_power are for the contrastive (text) loss; sizes_per_step is at
    most the nesting list's length, and every prefix's temperature is at most 1."""
    if train.sizes_per_step:
        check(model.modality == "text", f"{prefix}train.sizes_per_step={train.sizes_per_step} samples the sizes of "
                                        "the contrastive text loss; image models train every size's head each step "
                                        "(set 0)")
        check(train.sizes_per_step <= len(model.sizes),
               f"{prefix}train.sizes_per_step={train.sizes_per_step} is above the {len(model.sizes)} sizes of the "
               f"nesting list {model.sizes}")
    if train.temperature_power:
        check(model.modality == "text", f"{prefix}train.temperature_power={train.temperature_power} sets the "
                                        "temperatures of the contrastive text loss; image models have none (set 0)")
        hottest = prefix_temperatures(model.sizes, train.temperature, train.temperature_power)[0]
        check(hottest <= 1, f"{prefix}train.temperature_power={train.temperature_power} gives size {model.sizes[0]} "
                            f"the temperature {hottest:.3g} (train.temperature * (d / m) ** power); it must be at "
                            "most 1: lower the power or the temperature")


def check_location(name: str, value: str | None) -> None:
    """A path field holds a local path or an accepted URI (no credentials, a bucket named); None passes."""
    problem = None if value is None else storage.uri_problem(value)
    check(problem is None, f"{name} {value!r} {problem}")


def check_paths(cfg: Any) -> None:
    """Check the local paths a job config reads (data directories, pretrained weights), at the start of the job
    that reads them: a config validates anywhere, its paths only where it runs.

    Raises:
        ConfigError: naming the field, the path and how to get the data.
    """
    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, DataConfig):
            check_data_paths(node, prefix)
        pretrained = node.pretrained_path if isinstance(node, ModelConfig) else None
        if pretrained is not None and not Path(pretrained).is_dir():
            raise ConfigError(f"{prefix}pretrained_path {node.pretrained_path!r} is not a directory; weights load "
                              "only from a local path (a directory saved with save_pretrained)")
        if dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                walk(getattr(node, f.name), f"{prefix}{f.name}.")

    walk(cfg, "")
