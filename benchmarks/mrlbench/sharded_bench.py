"""The sharded-serving benchmark's config (`benchmarks/sharded_serving.py` runs it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mrl.configio import check, positive
from mrl.retrieval.config import IndexConfig
from mrl.service.config import ServeConfig


@dataclass(frozen=True, kw_only=True)
class ShardedBenchConfig:
    """Layouts of the same rows (whole, then N shards) served side by side (`benchmarks/sharded_serving.py`)."""

    embeddings: str = "outputs/scale/embeddings/latest"
    output_dir: str = "outputs/scale"
    """Built layouts are kept under <output_dir>/sharded/<rows>-<shards> for reruns."""
    corpora: tuple[int, ...] = (60_000, 1_000_000)
    shards: tuple[int, ...] = (1, 2, 4)
    rounds: int = 2
    seconds: float = 15.0
    concurrency: int = 8
    recall_queries: int = 200
    index: IndexConfig = field(default_factory=IndexConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    target_overhead: float = 1.5
    """The issue's bar: 4 shards' single-query p50 at most this times the whole index's."""
    node_memory_gib: tuple[int, ...] = (128, 256, 512)
    results: str = "docs/results/sharded_serving"

    def __post_init__(self) -> None:
        check(bool(self.shards) and self.shards[0] == 1 and list(self.shards) == sorted(set(self.shards)),
              f"shards must start with 1 (the whole index, the baseline) and increase, got {list(self.shards)}")
        check(bool(self.corpora) and min(self.corpora) > 0, f"corpora must be row counts > 0, got {self.corpora}")
        for name in ("rounds", "seconds", "concurrency", "recall_queries", "target_overhead"):
            positive(name, getattr(self, name))
