"""Typed, frozen configs for every stage. Ranges are checked in `__post_init__`, so a bad value stops the
job at load time, before any Ray work, with a message naming the field and the accepted values.

Sections (`DataConfig`, `ModelConfig`, ...) are shared; each job's config composes the sections it needs.
Configs check their own fields only, never the filesystem (a cluster config validates on a laptop):
`check_paths` checks the paths a job reads when it starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mrl.configio import ConfigError
from mrl.core.nesting import NestingError, log_sizes, uniform_sizes, validate_sizes, validate_weights
from mrl.retrieval.indexes import INDEX_KINDS, IndexParams, check_index
from mrl.retrieval.modes import SEARCH_MODES, SearchSettings
from mrl.retrieval.plan import PlanError, check_stages

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _registered(name: str, value: str, registry) -> None:
    """Accepted names come from the registry, checked when the config is built: an encoder, head, loss, index
    kind or search mode registered by any module (even after this one is imported) is accepted."""
    _check(value in registry, f"{name} {value!r} is not accepted; choose one of {list(registry)}")


def _positive(name: str, value: int | float | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    _check(value is not None and value > 0, f"{name} must be > 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class NestingConfig:
    """Which prefix sizes are trained and how much each counts."""

    schedule: Literal["log", "uniform", "list"] = "log"
    """log: powers of two from min_size up to d (d included); uniform: `count` evenly spaced sizes;
    list: exactly `sizes`."""
    min_size: int = 8
    """Smallest size for log/uniform schedules, in [1, d]."""
    count: int = 8
    """Number of sizes for the uniform schedule."""
    sizes: tuple[int, ...] | None = None
    """Explicit sorted list of sizes in [1, d] (schedule: list)."""
    weights: tuple[float, ...] | None = None
    """Relative importance c_m per size (default all 1); one per size."""

    def resolve(self, dim: int) -> list[int]:
        """The nesting list for representation size `dim`."""
        try:
            if self.schedule == "log":
                return log_sizes(dim, self.min_size)
            if self.schedule == "uniform":
                return uniform_sizes(dim, self.min_size, self.count)
            if self.sizes is None:
                raise NestingError("schedule 'list' needs nesting.sizes, e.g. [8, 16, 32, 64]")
            return validate_sizes(self.sizes, dim)
        except NestingError as exc:
            raise ConfigError(f"nesting: {exc}") from None

    def resolve_weights(self, dim: int) -> list[float]:
        try:
            return validate_weights(self.weights, self.resolve(dim))
        except NestingError as exc:
            raise ConfigError(f"nesting.weights: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class TextConfig:
    """Text encoders only: the tokenizer trained on the training split, and how token states are pooled."""

    vocab_size: int = 8192
    """Byte-level BPE vocabulary size (special tokens included); also the encoder's embedding table."""
    max_tokens: int = 64
    """Every text is cut to this many tokens ([CLS] and [SEP] included) and padded to it."""
    lowercase: bool = True
    pooling: Literal["mean", "cls"] = "mean"
    """mean: average of the non-pad token states; cls: the [CLS] state."""

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 300, f"text.vocab_size must be >= 300 (bytes + specials), got {self.vocab_size}")
        _check(self.max_tokens >= 3, f"text.max_tokens must be >= 3, got {self.max_tokens}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The encoder, its representation size d and the MRL heads."""

    encoder: str = "cnn"
    """A name in `mrl.core.models.encoders.ENCODERS`: cnn (compact CPU-friendly CNN); resnet18/resnet50/vit/bert
    (`transformers` models built from config)."""
    dim: int = 512
    """Representation size d; a projection maps the backbone's width to d when they differ."""
    head: str = "mrl"
    """A name in `mrl.core.models.heads.HEADS`: mrl (an independent linear head per size); mrl_e (one shared
    head sliced per size)."""
    num_classes: int = 10
    in_channels: int = 1
    """Image channels (1 for Fashion-MNIST, 3 for RGB)."""
    image_size: int = 28
    """Input images are square of this side."""
    nesting: NestingConfig = field(default_factory=NestingConfig)
    pretrained_path: str | None = None
    """Local directory with `transformers` weights (config.json + weights); never downloaded."""
    backbone: dict[str, Any] = field(default_factory=dict)
    """Extra `transformers` config fields (e.g. hidden_size, num_hidden_layers) or cnn widths."""
    text: TextConfig = field(default_factory=TextConfig)
    """Tokenizer and pooling of text encoders (bert); ignored by image encoders."""
    projection: bool = False
    """A linear layer from the encoder's output to z even when its width is already d (there is always one when
    it differs): the nested prefixes are then cut from a learned projection, not from the encoder's own state."""

    def __post_init__(self) -> None:
        from mrl.core.models.encoders import ENCODERS  # torch: imported when a model config is built
        from mrl.core.models.heads import HEADS

        _registered("encoder", self.encoder, ENCODERS)
        _registered("head", self.head, HEADS)
        if self.modality == "text":
            _check(self.head == "none", f"encoder {self.encoder!r} is a text encoder, trained contrastively on "
                                        f"(query, document) pairs without a classifier: set head: none, "
                                        f"not {self.head!r}")
        _positive("dim", self.dim)
        _check(self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}")
        _check(self.in_channels in (1, 3), f"in_channels must be 1 or 3, got {self.in_channels}")
        _positive("image_size", self.image_size)
        self.nesting.resolve_weights(self.dim)  # raises on a bad list or weights
        if self.pretrained_path is not None:
            _check(self.encoder != "cnn", "pretrained_path is only for transformers encoders, not 'cnn'")

    @property
    def sizes(self) -> list[int]:
        return self.nesting.resolve(self.dim)

    @property
    def modality(self) -> str:
        """"text" for encoders over token ids, else "image"."""
        from mrl.core.models.encoders import encoder_modality

        return encoder_modality(self.encoder)

    @property
    def weights(self) -> list[float]:
        return self.nesting.resolve_weights(self.dim)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the labelled data comes from."""

    source: Literal["fashion_mnist", "image_folder", "parquet", "wordnet", "text_parquet"] = "fashion_mnist"
    """Images: fashion_mnist (IDX files); image_folder (<path>/<split>/<class>/*.png); parquet
    (<path>/<split>.parquet with columns `image`, flattened pixels, and `label`).
    Text (for text encoders): wordnet (WordNet synsets converted once into text shards at <path>, see
    mrl.data.wordnet); text_parquet (<path>/<split>/*.parquet with columns id, label, query, document)."""
    path: str | None = None
    """Data directory; fashion_mnist defaults to the Debian package's /usr/share/datasets/fashion-mnist;
    wordnet: where the converted shards go (written from `wordnet_root` on first use, reused after)."""
    wordnet_root: str = "/usr/share/wordnet"
    """wordnet: the WordNet database files (Debian package wordnet-base)."""
    test_fraction: float = 0.1
    """wordnet: share of synsets in the test split (a stable hash of seed and synset id decides), in (0, 0.5]."""
    test_split: str = "test"
    """The held-out split's name on disk (<path>/<test_split>/...; ImageNet: val). Stages call it "test"."""
    shards_path: str | None = None
    """fashion_mnist: where its IDX files are converted once into Parquet shards that workers stream (default
    <output_dir>/data/fashion-mnist; on a cluster, storage every node sees)."""
    val_fraction: float = 0.05
    """Share of the train split held out for per-epoch validation, in [0, 0.5)."""
    train_limit: int | None = None
    """Use only the first N training rows (quick runs, tests)."""
    test_limit: int | None = None
    """Use only the first N test rows."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0 <= self.val_fraction < 0.5, f"val_fraction must be in [0, 0.5), got {self.val_fraction}")
        _check(0 < self.test_fraction <= 0.5, f"test_fraction must be in (0, 0.5], got {self.test_fraction}")
        _positive("train_limit", self.train_limit, allow_none=True)
        _positive("test_limit", self.test_limit, allow_none=True)
        _check(bool(self.test_split) and "/" not in self.test_split and self.test_split != "train",
               f"test_split must be a directory name other than 'train', got {self.test_split!r}")
        self.root  # path is required for every source but fashion_mnist

    @property
    def root(self) -> str:
        if self.path is not None:
            return self.path
        if self.source == "fashion_mnist":
            return FASHION_MNIST_DIR
        raise ConfigError(f"path is required when source is {self.source!r}")

    @property
    def modality(self) -> str:
        """"text" for the text sources, else "image"."""
        return "text" if self.source in ("wordnet", "text_parquet") else "image"


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
    """Text models: InfoNCE temperature of the contrastive Matryoshka loss, in (0, 1]."""
    seed: int = 0
    shuffle_buffer: int = 4096
    """Image models: rows each worker gathers from its stream and shuffles (seeded per epoch) before cutting them
    into batches, on top of the read blocks' seeded order; more mixes better and holds more memory."""
    cache_blocks: Literal["auto", "always", "never"] = "auto"
    """Image models: keep the training part's decoded blocks in Ray's object store after one read, so epochs
    read nothing from the source. auto: when they take at most a quarter of the cluster's object store
    (Fashion-MNIST does, ImageNet does not); never: every epoch streams from the source."""

    def __post_init__(self) -> None:
        from mrl.core.losses import LOSSES

        _registered("loss", self.loss, LOSSES)
        _check(0 < self.temperature <= 1, f"temperature must be in (0, 1], got {self.temperature}")
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        _positive("shuffle_buffer", self.shuffle_buffer)
        _check(0 < self.lr < 10, f"lr must be in (0, 10), got {self.lr}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")


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
        _check(self.num_workers >= 1, f"num_workers must be >= 1, got {self.num_workers}")
        _positive("cpus_per_worker", self.cpus_per_worker)
        _positive("threads_per_worker", self.threads_per_worker, allow_none=True)
        _check(self.max_failures >= -1, f"max_failures must be >= -1, got {self.max_failures}")


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Which Ray cluster to use."""

    address: str | None = None
    """None: the cluster in RAY_ADDRESS (as under `ray job submit`) or a new local one; else e.g. 'auto'."""
    num_cpus: int | None = 8
    """Logical CPUs of a new local cluster. More than the cores, so Train workers never starve Ray Data."""

    def __post_init__(self) -> None:
        _positive("num_cpus", self.num_cpus, allow_none=True)


@dataclass(frozen=True, kw_only=True)
class MlflowConfig:
    """Where runs, models and artifacts are recorded."""

    tracking_uri: str | None = None
    """None: MLflow's embedded sqlite store at <output_dir>/mlflow.db (artifacts in <output_dir>/mlartifacts)."""
    experiment: str = "mrl"
    registered_model: str = "mrl-fashion-mnist"


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
        _check(len(self.splits) > 0, "splits must name at least one of ['train', 'test']")
        _positive("augment_rows", self.augment_rows, allow_none=True)
        _check(self.augment_seed >= 0, f"augment_seed must be >= 0, got {self.augment_seed}")
        _positive("batch_size", self.batch_size)
        _positive("num_actors", self.num_actors)
        _positive("cpus_per_actor", self.cpus_per_actor)
        _check(self.gpus_per_actor >= 0, f"gpus_per_actor must be >= 0, got {self.gpus_per_actor}")
        _positive("rows_per_file", self.rows_per_file)
        _check(self.precision != "bf16" or self.gpus_per_actor > 0,
               "precision bf16 needs GPU actors: set gpus_per_actor > 0, or precision auto / fp32")


@dataclass(frozen=True, kw_only=True)
class SizeIndexParams:
    """Build and search settings of the index on one prefix size, overriding `IndexConfig`'s (None: keep)."""

    size: int
    hnsw_m: int | None = None
    ef_construction: int | None = None
    ef_search: int | None = None
    """The graph's default search breadth (a request's or a plan's ef_search still overrides it)."""
    index_storage: Literal["float32", "float16"] | None = None
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None

    def __post_init__(self) -> None:
        _positive("size", self.size)
        for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "pq_m"):
            _positive(name, getattr(self, name), allow_none=True)


@dataclass(frozen=True, kw_only=True)
class IndexConfig:
    """FAISS indexes over the database split, one per prefix size, each prefix L2-normalised."""

    sizes: tuple[int, ...] | None = None
    """Prefix sizes to index; None: the model's nesting list."""
    kind: str = "flat"
    """flat: exact; hnsw: graph; ivf: k-means cells with exact vectors; ivfpq: cells with PQ codes."""
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 128
    index_storage: Literal["float32", "float16"] = "float32"
    """How HNSW graphs and IVF lists hold their vectors (float16: half the bytes per vector)."""
    nlist: int = 1024
    """IVF cells (capped at rows / 39)."""
    nprobe: int = 16
    pq_m: int = 16
    """IVF-PQ sub-quantisers; must divide every indexed size."""
    vector_dtype: Literal["float32", "float16"] = "float32"
    """Storage of the full-size rerank vectors (float16 halves memory; scores are computed in float32)."""
    adanns_size: int | None = None
    """Also build AdANNS cells (k-means on this prefix size, `adanns_nlist` cells) for the service's adanns
    mode; None: none."""
    adanns_nlist: int = 1024
    per_size: tuple[SizeIndexParams, ...] = ()
    """Settings of single sizes' indexes, e.g. `[{size: 64, hnsw_m: 16, ef_search: 48}]` for a graph
    shortlist on the 64-d prefix with its own degree and breadth."""
    calibrate: bool = True
    """Measure a calibration table (recall and single-query latency of candidate plans) on held-out queries
    (the embed run's test split) into the index manifest, so requests may ask for a latency or recall budget."""
    calibration_queries: int = 500
    """Held-out queries the calibration uses (the first 200 are also timed one by one)."""

    def __post_init__(self) -> None:
        _registered("kind", self.kind, INDEX_KINDS)
        _positive("calibration_queries", self.calibration_queries)
        if self.sizes is not None:
            try:
                validate_sizes(self.sizes, dim=10**9)
            except NestingError as exc:
                raise ConfigError(f"sizes: {exc}") from None
        for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "pq_m", "adanns_nlist"):
            _positive(name, getattr(self, name))
        _positive("adanns_size", self.adanns_size, allow_none=True)
        per = [o.size for o in self.per_size]
        _check(len(per) == len(set(per)), f"per_size lists a size more than once: {per}")
        _check(self.sizes is None or set(per) <= set(self.sizes),
               f"per_size sets sizes {sorted(set(per) - set(self.sizes or ()))}, which are not in sizes {self.sizes}")
        for m in sorted({*(self.sizes or ()), *per}):
            try:
                check_index(self.kind, m, 10**9, self.params(m))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    def params(self, size: int | None = None) -> IndexParams:
        """Build and default search settings of the index on prefix `size` (`per_size` over the defaults;
        None: the defaults) for `mrl.retrieval.indexes.build_prefix_index`."""
        values = {"hnsw_m": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                  "index_storage": self.index_storage, "nlist": self.nlist, "nprobe": self.nprobe, "pq_m": self.pq_m}
        for override in self.per_size:
            if override.size == size:
                values.update({k: v for k, v in dataclasses.asdict(override).items() if k != "size" and v is not None})
        values["storage"] = values.pop("index_storage")
        return IndexParams(**values)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Per-size evaluation: linear top-1 from the model's heads, 1-NN and mAP@k by retrieval."""

    k: int = 10
    max_queries: int | None = None
    """Evaluate on the first N test rows only (quick runs)."""

    def __post_init__(self) -> None:
        _positive("k", self.k)
        _positive("max_queries", self.max_queries, allow_none=True)


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """The adaptive-retrieval HTTP service."""

    mode: str = "adaptive"
    """Default search mode, one of `mrl.retrieval.modes.SEARCH_MODES` (a request may name another): adaptive = shortlist K with D_s, rerank with D_r;
    funnel = shortlist, then rerank through `funnel` stages; adanns = members of the `nprobe` nearest AdANNS
    cells scored with D_s, then the funnel (needs index.adanns_size); full = one search of the size-d index."""
    shortlist_size: int = 16
    """D_s: prefix size used to shortlist."""
    shortlist_k: int = 200
    """K: shortlist length, reranked exactly with the rerank size."""
    rerank_size: int | None = None
    """D_r: prefix size used to rerank; None: the full d."""
    funnel: tuple[tuple[int | None, int], ...] | None = None
    """Funnel rerank stages (size, keep) after the shortlist, size null = d; None: sizes double from 2 D_s to d
    while keeps halve from K/2 (never below k), e.g. 16/200 -> 32/100 -> 64/50 -> 128/25 -> 256/12 -> ... -> d/k."""
    nprobe: int | None = None
    """IVF cells / AdANNS cells probed per query; None: the index's own setting (AdANNS: 8)."""
    ef_search: int | None = None
    """HNSW search breadth; None: the index's own setting."""
    default_k: int = 10
    max_k: int = 100
    """The largest k a request may ask for (422 above it)."""
    max_shortlist_k: int = 2000
    """The largest shortlist K a request may ask for (422 above it): a request cannot make a replica rerank
    the whole corpus."""
    max_body_bytes: int = 1_000_000
    """Larger request bodies get 413 before they are read (a 2048-d vector is about 40 kB of JSON)."""
    api_key_env: str | None = None
    """Name of an environment variable holding the API key; with a key, every route but /healthz answers 401
    unless the request sends `Authorization: Bearer <key>`. None (and no api_key_file): no key."""
    api_key_file: str | None = None
    """A file holding the API key (first line), e.g. a mounted secret; never put the key itself in a config."""
    num_replicas: int = 1
    """Replicas when `autoscaling` is null."""
    autoscaling: dict[str, int | float] | None = None
    """Ray Serve autoscaling_config, e.g. {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 16};
    null: a fixed `num_replicas`."""
    max_replicas_per_node: int | None = None
    """At most this many search replicas on one node (1: one per node, so a node's loss takes one replica);
    null: Ray Serve places them where it likes."""
    max_ongoing_requests: int = 64
    """Requests a replica holds at once (queued for its batches); at least batch_max_size."""
    batch_max_size: int = 32
    """Ray Serve dynamic batching: concurrent requests are searched together, up to this many at once."""
    batch_wait_ms: float = 0.0
    """How long a batch waits to fill before it runs. 0: it takes the requests that queued while the previous
    batch ran (a lone request pays no wait; measured: 2 ms cost single clients 2.8 ms of p50 for 10% more
    throughput at 32 clients)."""
    encoder_batch_max_size: int = 8
    """The Encoder deployment's dynamic batching: up to this many concurrent calls (each a Retriever batch's
    images or texts) are embedded in one forward pass."""
    gpus_per_replica: float = 0.0
    """GPUs reserved per replica (Ray Serve `num_gpus`)."""
    encoder: bool = True
    """Deploy the index's model beside the retriever so requests may send an image (base64); needs an index
    whose manifest names its model, and the MLflow store that holds it."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where replicas search: auto = the GPU(s) when faiss-gpu is installed and sees one, else the CPU."""
    host: str = "127.0.0.1"
    port: int = 8000

    def __post_init__(self) -> None:
        _positive("shortlist_size", self.shortlist_size)
        _positive("shortlist_k", self.shortlist_k)
        _positive("rerank_size", self.rerank_size, allow_none=True)
        _positive("default_k", self.default_k)
        _positive("nprobe", self.nprobe, allow_none=True)
        _positive("ef_search", self.ef_search, allow_none=True)
        _registered("mode", self.mode, SEARCH_MODES)
        if self.funnel is not None:
            _check(len(self.funnel) > 0, "funnel must list at least one (size, keep) stage, or be null")
            try:
                check_stages(self.funnel, after_size=self.shortlist_size, after_keep=self.shortlist_k)
            except PlanError as exc:
                raise ConfigError(f"funnel: {exc}") from None
        _check(self.default_k <= self.shortlist_k,
               f"default_k ({self.default_k}) must be <= shortlist_k ({self.shortlist_k})")
        _check(self.default_k <= self.max_k, f"default_k ({self.default_k}) must be <= max_k ({self.max_k})")
        _check(self.shortlist_k <= self.max_shortlist_k,
               f"shortlist_k ({self.shortlist_k}) must be <= max_shortlist_k ({self.max_shortlist_k})")
        _positive("max_body_bytes", self.max_body_bytes)
        _check(self.api_key_env is None or self.api_key_file is None,
               "give at most one of api_key_env and api_key_file")
        _check(self.api_key_env is None or bool(self.api_key_env.strip()), "api_key_env must name a variable")
        _positive("num_replicas", self.num_replicas)
        _positive("max_replicas_per_node", self.max_replicas_per_node, allow_none=True)
        if self.autoscaling is not None:
            known = {"min_replicas", "max_replicas", "target_ongoing_requests", "initial_replicas",
                     "upscale_delay_s", "downscale_delay_s"}
            unknown = sorted(set(self.autoscaling) - known)
            _check(not unknown, f"autoscaling keys {unknown} are not accepted; choose from {sorted(known)}")
            lo, hi = self.autoscaling.get("min_replicas", 1), self.autoscaling.get("max_replicas", 1)
            _check(0 <= lo <= hi and hi >= 1,
                   f"autoscaling needs 0 <= min_replicas <= max_replicas >= 1, got {lo} and {hi}")
        _positive("batch_max_size", self.batch_max_size)
        _positive("encoder_batch_max_size", self.encoder_batch_max_size)
        _check(0 <= self.batch_wait_ms <= 1000, f"batch_wait_ms must be in [0, 1000], got {self.batch_wait_ms}")
        _check(self.max_ongoing_requests >= self.batch_max_size,
               f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= batch_max_size "
               f"({self.batch_max_size}), or batches never fill")
        _check(self.gpus_per_replica >= 0, f"gpus_per_replica must be >= 0, got {self.gpus_per_replica}")
        _check(0 < self.port < 65536, f"port must be in [1, 65535], got {self.port}")

    def search_settings(self) -> SearchSettings:
        """What the search modes read."""
        return SearchSettings(shortlist_size=self.shortlist_size, shortlist_k=self.shortlist_k,
                              rerank_size=self.rerank_size, funnel=self.funnel, nprobe=self.nprobe,
                              ef_search=self.ef_search)


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """What every job config has: where its outputs go and where MLflow records them."""

    output_dir: str = "outputs"
    """Root of every artifact (Ray Train storage, embeddings, indexes, the sqlite MLflow store). On a
    multi-node cluster: a path every node sees (NFS)."""
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def __post_init__(self) -> None:
        _check(bool(self.output_dir), "output_dir must be a non-empty path")


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
    """Where Ray Train keeps the run's checkpoints. None: <output_dir>/ray. On several nodes, storage every node
    sees: a shared path, or a URI of pyarrow's filesystem layer (s3://bucket/prefix, gs://..., file:///mnt/...)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_modalities(self.data, self.model)
        _check(self.storage_path is None or bool(self.storage_path.strip()),
               "storage_path must be a path or URI, or null for <output_dir>/ray")


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
    """jobs/build_index.py"""

    embeddings: str = "outputs/embeddings/latest"
    """Directory written by the embed stage (holds manifest.json and <split>/*.parquet)."""
    index: IndexConfig = field(default_factory=IndexConfig)


@dataclass(frozen=True, kw_only=True)
class EvaluateJobConfig(JobConfig):
    """jobs/evaluate.py"""

    embeddings: str = "outputs/embeddings/latest"
    evaluate: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True, kw_only=True)
class ServeJobConfig(JobConfig):
    """serving/app.py"""

    index_dir: str = "outputs/index/latest"
    """Directory written by the build_index stage (holds manifest.json)."""
    serve: ServeConfig = field(default_factory=ServeConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    block: bool = True
    """Keep serving until interrupted (False: deploy and return)."""


@dataclass(frozen=True, kw_only=True)
class SearchJobConfig:
    """mrl search: query an index from the command line, through the service's own code (no Ray, no HTTP)."""

    index_dir: str = "outputs/index/latest"
    """Directory written by the build_index stage."""
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

    target: str = "outputs/index/latest"
    """A running service's URL (http://...), an index or embeddings directory, or a model URI (models:/...)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(bool(self.target), "target must name a URL, a directory or a model URI")


@dataclass(frozen=True, kw_only=True)
class PromoteJobConfig(JobConfig):
    """mrl promote: point a registry alias (default champion, what the embed stage loads) at a model version."""

    model_uri: str = ""
    """models:/name/version (or another alias) to promote."""
    alias: str = "champion"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.model_uri.startswith("models:/"),
               f"model_uri must be a registered model version such as models:/mrl-fashion-mnist/3, got "
               f"{self.model_uri!r}")
        _check(bool(self.alias) and self.alias.replace("-", "").replace("_", "").isalnum(),
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

    def __post_init__(self) -> None:
        _check(len(self.schedules) > 0, "schedules must list at least one of ['log', 'uniform']")
        for name in ("min_sizes", "counts"):
            values = getattr(self, name)
            _check(len(values) > 0 and all(v >= 1 for v in values),
                   f"{name} must be a non-empty list of integers >= 1, got {list(values)}")
        _check(len(self.smallest_weight) > 0 and all(math.isfinite(w) and w > 0 for w in self.smallest_weight),
               f"smallest_weight must be a non-empty list of numbers > 0, got {list(self.smallest_weight)}")
        _check(len(self.weight_alpha) > 0 and all(-4 <= a <= 4 for a in self.weight_alpha),
               f"weight_alpha must be a non-empty list of numbers in [-4, 4], got {list(self.weight_alpha)}")
        _check(all(0 < x < 10 for x in self.lr), f"lr values must be in (0, 10), got {list(self.lr)}")
        _check(all(m >= 1 for m in self.deploy_sizes), f"deploy_sizes must be >= 1, got {list(self.deploy_sizes)}")


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
        _positive("num_samples", self.num_samples)
        _positive("grace_period", self.grace_period)
        _check(self.reduction_factor >= 2, f"reduction_factor must be >= 2, got {self.reduction_factor}")


@dataclass(frozen=True, kw_only=True)
class TuneJobConfig(JobConfig):
    """tuning/tune.py"""

    base: TrainJobConfig = field(default_factory=TrainJobConfig)
    """The training run every trial starts from (its output_dir and mlflow are replaced by the sweep's)."""
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
        _positive("max_concurrent_trials", self.max_concurrent_trials)
        _check(self.max_failures >= 0, f"max_failures must be >= 0, got {self.max_failures}")
        _positive("winner_epochs", self.winner_epochs, allow_none=True)
        _check(0 <= self.full_tolerance < 1, f"full_tolerance must be in [0, 1), got {self.full_tolerance}")
        dim = self.base.model.dim
        too_big = [m for m in self.space.deploy_sizes if m > dim]
        _check(not too_big, f"space.deploy_sizes {too_big} go above base.model.dim {dim}")
        _check(self.search.scheduler != "asha" or self.search.grace_period <= self.base.train.epochs,
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


@dataclass(frozen=True, kw_only=True)
class PipelineConfig(JobConfig):
    """jobs/pipeline.py: train -> embed -> build_index -> evaluate -> serve, on one Ray cluster."""

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
        # The same rules the build_index stage and the service apply to the real artifacts, applied to the
        # index this pipeline will build (model.dim, its sizes and AdANNS cells).
        from mrl.retrieval.artifact import check_index_config, planned_sources
        from mrl.retrieval.modes import check_settings

        try:
            sizes = check_index_config(self.index, self.model.dim, self.model.sizes)
            check_settings(self.serve.search_settings(), self.serve.mode,
                           planned_sources(sizes, self.index.adanns_size), self.model.dim, self.serve.default_k)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def train_job(self) -> TrainJobConfig:
        return TrainJobConfig(output_dir=self.output_dir, run_name=self.run_name, data=self.data, model=self.model,
                              train=self.train, resources=self.resources, ray=self.ray, mlflow=self.mlflow)


def check_modalities(data: DataConfig, model: ModelConfig, prefix: str = "") -> None:
    """A text encoder needs a text source and an image encoder an image source."""
    _check(data.modality == model.modality,
           f"{prefix}data.source {data.source!r} is {data.modality} data but {prefix}model.encoder "
           f"{model.encoder!r} is a{'n' if model.modality == 'image' else ''} {model.modality} encoder")


def check_paths(cfg: Any) -> None:
    """Check the local paths a job config reads (data directories, pretrained weights), at the start of the job
    that reads them: a config validates anywhere, its paths only where it runs.

    Raises:
        ConfigError: naming the field, the path and how to get the data.
    """
    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, DataConfig) and node.source == "wordnet":
            if not (Path(node.wordnet_root) / "data.noun").is_file():
                raise ConfigError(f"{prefix}wordnet_root {node.wordnet_root!r} holds no WordNet database (data.noun); "
                                  "install it with `apt-get install -y wordnet-base`")
        elif isinstance(node, DataConfig):
            root = Path(node.root)
            if not root.exists():
                hint = ("install it with `apt-get install -y dataset-fashion-mnist`, or give a directory holding "
                        "the four IDX files" if node.source == "fashion_mnist" else "give an existing directory")
                raise ConfigError(f"{prefix}path {str(root)!r} does not exist ({node.source} data); {hint}")
        if isinstance(node, ModelConfig) and node.pretrained_path is not None and not Path(node.pretrained_path).is_dir():
            raise ConfigError(f"{prefix}pretrained_path {node.pretrained_path!r} is not a directory; weights load "
                              "only from a local path (a directory saved with save_pretrained)")
        if dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                walk(getattr(node, f.name), f"{prefix}{f.name}.")

    walk(cfg, "")
