"""Serving a sharded index: what one shard answers (`ShardService`), the Retriever's view of the whole index from
its top-level manifest (`ShardedIndex`), and the scatter-gather over the shards' deployments (`Scatter`).

Each shard of a sharded index (`mrl.artifacts.index.write_sharded_index`) is served by its own Ray Serve
deployment, `Shard`, with its own replicas, in an application of its own named after the index version
(`shard_app_name`). The Retriever validates a request and makes its plan as for a whole index, sends the
per-shard plan (`mrl.retrieval.sharded.shard_plan`) with the queries to every shard at once, and merges their
top-k exactly (ties by the lower id). Because a Retriever only ever calls the shard applications of its own
index version, and every shard reply carries its version (checked), one reply never mixes versions; a new
version's shard applications are started before the Retriever is swapped and the old ones deleted after
(`mrl.service.app.deploy`).

A call to a shard that fails because its replica died is retried once (Serve routes the retry to a live replica:
a killed replica costs no request while the shard has another). A shard that does not answer within
`serve.shard_timeout_s`, or fails twice, is missing: by `serve.on_missing_shard` the request then gets 503
naming it (`fail`) or the merge of the shards that answered, flagged `partial` (`partial`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from mrl.artifacts.index import IndexMismatchError, planned_codes, planned_sources
from mrl.artifacts.manifest import ManifestError, read_manifest
from mrl.retrieval.plan import QueryPlan
from mrl.retrieval.sharded import Hits, assign_shards, merge_hits, shard_hits, shard_plan, shard_summary
from mrl.runtime import rss_anon_bytes


def shard_app_name(app: str, version: str, shard: int) -> str:
    """The Serve application of one shard of index `version` under the Retriever application `app`."""
    return f"{app}-{version}-shard{shard}"


class ShardService:
    """One shard's searches, without Ray: a loaded shard artifact (`mrl.artifacts.index.load_shard`)."""

    def __init__(self, artifact):
        self.artifact = artifact
        self.shard = int(artifact.manifest["shard"])
        self.version = artifact.version
        self._order = np.argsort(artifact.ids, kind="stable")

    def search(self, plan: QueryPlan, queries: np.ndarray) -> tuple[str, Hits]:
        """(this shard's index version, its top-k for the per-shard `plan`)."""
        return self.version, shard_hits(self.artifact, plan, np.asarray(queries, dtype=np.float32))

    def row(self, item_id: int) -> tuple[str, np.ndarray, int] | tuple[str, None, None]:
        """(version, the item's full vector (d,) float32, its label), or (version, None, None) when the id is not
        in this shard."""
        ids = self.artifact.ids
        at = int(np.searchsorted(ids, item_id, sorter=self._order))
        if at >= len(ids) or ids[self._order[at]] != item_id:
            return self.version, None, None
        position = int(self._order[at])
        return (self.version, np.asarray(self.artifact.vectors[position], dtype=np.float32),
                int(self.artifact.labels[position]))

    def health(self) -> dict[str, Any]:
        """The shard's version, rows and memory (what its replica holds for it; the deployment answers
        (version, this))."""
        engine = self.artifact.engine
        held = engine.resident_bytes()
        return {"shard": self.shard, "version": self.version, "rows": len(engine),
                "structures_bytes": held, "bytes_per_vector": held / max(1, len(engine)),
                "vector_file_bytes": int(engine.store.vectors.nbytes) if engine.store.mapped else 0,
                "process_rss_anon_bytes": rss_anon_bytes()}


class _Planner:
    """What the service asks of an engine to validate requests and make plans, from a sharded manifest."""

    on_gpu = False

    def __init__(self, manifest: dict[str, Any]):
        self._sources = planned_sources(manifest["sizes"], (manifest.get("adanns") or {}).get("size"))
        self._codes = sorted(planned_codes(manifest.get("codes") or ()))
        self.rows = int(manifest["rows"])

    def __len__(self) -> int:
        return self.rows

    def source_sizes(self) -> dict[str, int]:
        return dict(self._sources)

    def code_keys(self) -> list[tuple[str, int]]:
        return list(self._codes)

    def smallest_prefix(self, plan: QueryPlan) -> int:
        return min([self._sources[plan.shortlist.source], *plan.sizes()])


@dataclasses.dataclass
class ShardedIndex:
    """A sharded index as the Retriever holds it: the top-level manifest only (the shards hold the rows)."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> "ShardedIndex":
        path = Path(path).resolve()
        try:
            manifest = read_manifest(path, stage="index")
        except ManifestError as exc:
            raise IndexMismatchError(str(exc)) from None
        if not manifest.get("shards"):
            raise IndexMismatchError(f"index {path} is not sharded")
        return cls(path, manifest)

    def __post_init__(self):
        self.engine = _Planner(self.manifest)
        self.ids = self.labels = self.vectors = None

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def version(self) -> str:
        return str(self.manifest.get("index_run_id", self.path.name))

    @property
    def count(self) -> int:
        return len(self.manifest["shards"]["list"])

    @property
    def rule(self) -> str:
        return self.manifest["shards"]["rule"]

    def owner(self, item_id: int) -> int:
        """The shard that holds `item_id` if the index does."""
        shards = self.manifest["shards"]
        return int(assign_shards(np.array([item_id]), self.count, shards["by"], shards["starts"])[0])

    def summary(self) -> dict[str, Any]:
        return shard_summary(self.manifest)


class ShardMissing(RuntimeError):
    """A shard gave no answer (timeout, failures, or another index version)."""

    def __init__(self, shard: int, reason: str):
        super().__init__(f"shard {shard}: {reason}")
        self.shard, self.reason = shard, reason


class Scatter:
    """Calls to every shard's deployment (handles in shard order), each retried once when its replica fails, with
    a deadline; replies checked against the Retriever's index version."""

    def __init__(self, handles: list, version: str, timeout_s: float):
        self.handles, self.version, self.timeout_s = handles, version, timeout_s

    async def ask(self, shard: int, method: str, *args) -> Any:
        """One shard's answer to `method(*args)` (retried once), without its version; raises ShardMissing."""
        reason = ""
        for _ in range(2):
            response = getattr(self.handles[shard], method).remote(*args)
            try:
                version, *answer = await asyncio.wait_for(_awaited(response), self.timeout_s)
            except asyncio.TimeoutError:
                response.cancel()
                raise ShardMissing(shard, f"no answer within serve.shard_timeout_s={self.timeout_s:g}s") from None
            except Exception as exc:  # noqa: BLE001 - a dead replica or a dead shard: retried, then missing
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                continue
            if version != self.version:
                raise ShardMissing(shard, f"answered for index version {version}, not {self.version}")
            return answer[0] if len(answer) == 1 else answer
        raise ShardMissing(shard, f"failed twice ({reason})")

    async def hits(self, plan: QueryPlan, queries: np.ndarray, rule: str
                   ) -> tuple[Hits | None, list[int], dict[int, str]]:
        """(merged hits of the shards that answered or None, the shards that answered, missing shard -> why)."""
        each = shard_plan(plan, len(self.handles), rule)
        replies = await asyncio.gather(*(self.ask(i, "search", each, queries) for i in range(len(self.handles))),
                                       return_exceptions=True)
        answered, missing, parts = [], {}, []
        for i, reply in enumerate(replies):
            if isinstance(reply, ShardMissing):
                missing[i] = reply.reason
            elif isinstance(reply, BaseException):
                missing[i] = f"{type(reply).__name__}"
            else:
                answered.append(i)
                parts.append(reply)
        return (merge_hits(parts, plan.k) if parts else None), answered, missing

    async def health(self) -> list[dict[str, Any]]:
        """Each shard's health, or {"shard", "status": "missing", "reason"}."""
        replies = await asyncio.gather(*(self.ask(i, "health") for i in range(len(self.handles))),
                                       return_exceptions=True)
        return [reply if not isinstance(reply, BaseException) else
                {"shard": i, "status": "missing", "reason": getattr(reply, "reason", type(reply).__name__)}
                for i, reply in enumerate(replies)]


async def _awaited(response):
    return await response
