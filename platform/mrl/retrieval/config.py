"""The FAISS indexes an index run makes (`IndexConfig`): kind, build and default search settings, per-size
overrides, AdANNS cells, and the budget calibration."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal

from mrl.configio import ConfigError, check, positive, registered
from mrl.core.nesting import NestingError, validate_sizes
from mrl.retrieval.codes import check_code
from mrl.retrieval.indexes import INDEX_KINDS, IndexParams, check_index

POSITIVE = ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "pq_m", "pq_bits", "train_per_cell",
            "kmeans_iters")


def _check_size_overrides(self) -> None:
    positive("size", self.size)
    for name in POSITIVE:
        positive(name, getattr(self, name), allow_none=True)


_hints = typing.get_type_hints(IndexParams)
SizeIndexParams = dataclasses.make_dataclass(
    "SizeIndexParams",
    [("size", int)] + [(f.name, _hints[f.name] | None, dataclasses.field(default=None))
                       for f in dataclasses.fields(IndexParams)],
    namespace={"__module__": __name__, "__post_init__": _check_size_overrides,
               "__doc__": "Build and search settings of the index on one prefix size: `size`, and any field of "
                          "`IndexParams` to override `IndexConfig`'s (None: keep)."},
    frozen=True, kw_only=True)


@dataclass(frozen=True, kw_only=True)
class IndexConfig(IndexParams):
    """FAISS indexes over the database split, one per prefix size, each prefix L2-normalised: the `IndexParams`
    fields (hnsw_m, ef_construction, ef_search, storage, nlist, nprobe, train_per_cell, kmeans_iters, pq_m,
    pq_bits, seed) are every size's
    defaults; `per_size` overrides them for single sizes."""

    sizes: tuple[int, ...] | None = None
    """Prefix sizes to index; None: the model's nesting list."""
    kind: str = "flat"
    """flat: exact; hnsw: graph; ivf: k-means cells with exact vectors; ivfpq: cells with PQ codes;
    binary_flat, binary_hnsw, binary_ivf: the same over the prefix's sign bits (Hamming distance, m / 8 bytes a
    row; sizes must be multiples of 8)."""
    vector_dtype: Literal["float32", "float16"] = "float32"
    """Storage of the full-size rerank vectors (float16 halves memory; scores are computed in float32)."""
    adanns_size: int | None = None
    """Also build AdANNS cells (k-means on this prefix size, `adanns_nlist` cells) for the service's adanns
    mode; None: none."""
    adanns_nlist: int = 1024
    codes: tuple[tuple[int, Literal["binary", "int8"]], ...] = ()
    """Compact codes to keep in RAM for code rerank stages, as (size, kind) pairs with kind binary (sign bits,
    size / 8 bytes a row) or int8 (size bytes a row), e.g. `[[1024, int8]]` for a funnel stage
    `[1024, 40, int8]` before the float rerank, which then reads only the survivors from the memory-mapped
    full vectors."""
    per_size: tuple[SizeIndexParams, ...] = ()
    """Settings of single sizes' indexes, e.g. `[{size: 64, hnsw_m: 16, ef_search: 48}]` for a graph
    shortlist on the 64-d prefix with its own degree and breadth."""
    calibrate: bool = True
    """Measure a calibration table (recall and single-query latency of candidate plans) on held-out queries
    (the embed run's test split) into the index manifest, so requests may ask for a latency or recall budget."""
    calibration_queries: int = 500
    """Held-out queries the calibration uses (the first 200 are also timed one by one)."""
    shards: int = 1
    """Split the rows into this many shards, each a complete index of its rows (indexes, codes, vectors) that
    the service deploys as its own Ray Serve deployment with its own replicas; 1: one index."""
    shard_by: Literal["hash", "range"] = "hash"
    """How rows go to shards: hash = a stable hash of the id (even shards whatever the ids); range = runs of
    sorted ids of equal length (a shard holds an id range)."""
    shard_rule: Literal["each", "split"] = "each"
    """The shortlist each shard takes for a plan with shortlist K: each = K on every shard (recall at least the
    whole index's; n times the candidates); split = ceil(K / shards) each, never below k (about the whole index's
    work in all). The calibration table is measured with it."""

    def __post_init__(self) -> None:
        registered("kind", self.kind, INDEX_KINDS)
        positive("calibration_queries", self.calibration_queries)
        check(1 <= self.shards <= 1024, f"shards must be in [1, 1024], got {self.shards}")
        if self.sizes is not None:
            try:
                validate_sizes(self.sizes, dim=10**9)
            except NestingError as exc:
                raise ConfigError(f"sizes: {exc}") from None
        for name in (*POSITIVE, "adanns_nlist"):
            positive(name, getattr(self, name))
        positive("adanns_size", self.adanns_size, allow_none=True)
        for i, pair in enumerate(self.codes):
            check(len(pair) == 2, f"codes[{i}] must be [size, kind], got {list(pair)}")
            try:
                check_code(pair[1], pair[0], 10**9)
            except ValueError as exc:
                raise ConfigError(f"codes[{i}]: {exc}") from None
        check(len(set(map(tuple, self.codes))) == len(self.codes), f"codes lists a pair more than once: "
              f"{[list(p) for p in self.codes]}")
        per = [o.size for o in self.per_size]
        check(len(per) == len(set(per)), f"per_size lists a size more than once: {per}")
        check(self.sizes is None or set(per) <= set(self.sizes),
               f"per_size sets sizes {sorted(set(per) - set(self.sizes or ()))}, which are not in sizes {self.sizes}")
        for m in sorted({*(self.sizes or ()), *per}):
            try:
                check_index(self.kind, m, 10**9, self.params(m))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    def params(self, size: int | None = None) -> IndexParams:
        """Build and default search settings of the index on prefix `size` (`per_size` over the defaults;
        None: the defaults) for `mrl.retrieval.indexes.build_prefix_index`."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(IndexParams)}
        for override in self.per_size:
            if override.size == size:
                values.update({k: v for k, v in dataclasses.asdict(override).items() if k != "size" and v is not None})
        return IndexParams(**values)
