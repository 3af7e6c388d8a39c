"""Where the labelled data comes from (`DataConfig`). Checked when built; the paths it names are checked by
the job that reads them (`mrl.stages.config.check_paths`), so a cluster config validates on a laptop."""

from __future__ import annotations

from dataclasses import dataclass

from mrl import storage
from mrl.configio import ConfigError, check, positive, registered
from mrl.data.sources import DATA_SOURCES


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the labelled data comes from."""

    source: str = "fashion_mnist"
    """A name in `mrl.data.sources.DATA_SOURCES`. Images: fashion_mnist (IDX files); image_folder (<path>/<split>/<class>/*.png); parquet
    (<path>/<split>.parquet with columns `image`, flattened pixels, and `label`).
    Text (for text encoders): wordnet (WordNet synsets converted once into text shards at <path>, see
    mrl.data.wordnet); text_parquet (<path>/<split>/*.parquet with columns id, label, query, document)."""
    path: str | None = None
    """Data directory: a local path or an object-storage URI (s3://bucket/prefix, gs://...). fashion_mnist
    defaults to the Debian package's /usr/share/datasets/fashion-mnist;
    wordnet: where the converted shards go (written from `wordnet_root` on first use, reused after)."""
    wordnet_root: str = "/usr/share/wordnet"
    """wordnet: the WordNet database files (Debian package wordnet-base)."""
    test_fraction: float = 0.1
    """wordnet: share of synsets in the test split (a stable hash of seed and synset id decides), in (0, 0.5]."""
    test_split: str = "test"
    """The held-out split's name on disk (<path>/<test_split>/...; ImageNet: val). Stages call it "test"."""
    shards_path: str | None = None
    """fashion_mnist: where its IDX files are converted once into Parquet shards that workers stream (default
    <artifacts_dir or output_dir>/data/fashion-mnist; on a cluster, storage every node sees: a shared path or an
    s3:// / gs:// URI)."""
    val_fraction: float = 0.05
    """Share of the train split held out for per-epoch validation, in [0, 0.5)."""
    train_limit: int | None = None
    """Use only the first N training rows (quick runs, tests)."""
    test_limit: int | None = None
    """Use only the first N test rows."""
    seed: int = 0

    def __post_init__(self) -> None:
        registered("source", self.source, DATA_SOURCES)
        check(0 <= self.val_fraction < 0.5, f"val_fraction must be in [0, 0.5), got {self.val_fraction}")
        check(0 < self.test_fraction <= 0.5, f"test_fraction must be in (0, 0.5], got {self.test_fraction}")
        positive("train_limit", self.train_limit, allow_none=True)
        positive("test_limit", self.test_limit, allow_none=True)
        check(bool(self.test_split) and "/" not in self.test_split and self.test_split != "train",
               f"test_split must be a directory name other than 'train', got {self.test_split!r}")
        for name in ("path", "shards_path"):
            value = getattr(self, name)
            problem = None if value is None else storage.uri_problem(value)
            check(problem is None, f"{name} {value!r} {problem}")
        self.root  # path is required for every source but fashion_mnist

    @property
    def root(self) -> str:
        if self.path is not None:
            return self.path
        default = DATA_SOURCES.get(self.source).default_root
        if default is None:
            raise ConfigError(f"path is required when source is {self.source!r}")
        return default

    @property
    def modality(self) -> str:
        """"image" or "text": the source's."""
        return DATA_SOURCES.get(self.source).modality
