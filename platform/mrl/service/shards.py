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

Serve manages the shards' replicas (placement, health checks, restarts, rolling updates); the searches go to a
plain Ray actor each replica starts on its node and owns (`ShardWorker` in `mrl.service.app`, registered by name
in WORKERS_NAMESPACE, dying with its replica), because a Serve handle call costs about three times a Ray actor
call (`benchmarks/serve_fanout.py`). A call that fails because its worker died is retried on another replica's worker (a
killed replica costs no request while the shard has another). A shard that does not answer within
`serve.shard_timeout_s`, or has no live worker, is missing: by `serve.on_missing_shard` the request then gets
503 naming it (`fail`) or the merge of the shards that answered, flagged `partial` (`partial`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from mrl.artifacts.index import IndexDirectory, IndexMismatchError, planned_codes, planned_sources
from mrl.artifacts.manifest import ManifestError, read_manifest
from mrl.retrieval.plan import QueryPlan
from mrl.retrieval.sharded import Hits, assign_shards, merge_hits, shard_hits, shard_plan
from mrl.service.retrieval import memory_report


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
        return {"shard": self.shard, "version": self.version, "rows": len(self.artifact.engine),
                **memory_report(self.artifact.engine)}


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
class ShardedIndex(IndexDirectory):
    """A sharded index as the Retriever holds it: the top-level manifest only (the shards hold the rows)."""

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

    def owner(self, item_id: int) -> int:
        """The shard that holds `item_id` if the index does."""
        shards = self.manifest["shards"]
        return int(assign_shards(np.array([item_id]), len(shards["list"]), shards["by"], shards["starts"])[0])


class ShardMissing(RuntimeError):
    """A shard gave no answer (timeout, failures, or another index version)."""

    def __init__(self, shard: int, reason: str):
        super().__init__(f"shard {shard}: {reason}")
        self.shard, self.reason = shard, reason


WORKERS_NAMESPACE = "mrl-shard-workers"


def worker_name(shard_app: str, replica: str) -> str:
    """The registered name of the search worker of one replica of a shard application."""
    return f"{shard_app}/{replica}"


class Workers:
    """The live search workers of every shard, found by name (each Shard replica registers one under
    `worker_name`, in WORKERS_NAMESPACE) and handed out in turn; a worker that fails a call is dropped until the
    next refresh. The names are listed again on demand: when a shard has no worker left, and at most every
    `refresh_s` otherwise, so replicas Serve starts later (after a node loss) take load again."""

    def __init__(self, shard_apps: list[str], refresh_s: float = 2.0):
        self.apps, self.refresh_s = shard_apps, refresh_s
        self.live: list[dict[str, Any]] = [{} for _ in shard_apps]  # per shard: name -> actor handle
        self._turn, self._listed = 0, 0.0

    def refresh(self) -> None:
        import ray
        from ray.util import list_named_actors

        names = {a["name"] for a in list_named_actors(all_namespaces=True) if a["namespace"] == WORKERS_NAMESPACE}
        for shard, app in enumerate(self.apps):
            mine = {n for n in names if n.startswith(f"{app}/")}
            for name in mine - set(self.live[shard]):
                try:
                    self.live[shard][name] = ray.get_actor(name, namespace=WORKERS_NAMESPACE)
                except ValueError:  # gone between the listing and now
                    continue
            for name in set(self.live[shard]) - mine:
                del self.live[shard][name]
        self._listed = time.monotonic()

    async def pick(self, shard: int) -> tuple[str, Any] | None:
        """A live worker of `shard` (name, handle), in turn, or None when it has none."""
        if not self.live[shard] or time.monotonic() - self._listed > self.refresh_s:
            await asyncio.to_thread(self.refresh)
        if not self.live[shard]:
            return None
        self._turn += 1
        names = sorted(self.live[shard])
        name = names[self._turn % len(names)]
        return name, self.live[shard][name]

    def drop(self, shard: int, name: str) -> None:
        self.live[shard].pop(name, None)

    def replicas(self) -> list[int]:
        return [len(live) for live in self.live]


class Scatter:
    """Calls to every shard's search workers (`Workers`), each failed call retried on another worker of the shard,
    with a deadline; replies checked against the Retriever's index version. The workers are plain Ray actors
    that Serve's Shard replicas start and own (they die with their replica): a call is one Ray actor task, not a
    Serve request (4 parallel calls from a Serve replica: 3.1 ms as actor calls, 9.5 ms as Serve handle calls;
    docs/results/serve_fanout.md)."""

    def __init__(self, workers: Workers, version: str, timeout_s: float):
        self.workers, self.version, self.timeout_s = workers, version, timeout_s

    async def ask(self, shard: int, method: str, *args) -> Any:
        """One shard's answer to `method(*args)`, without its version; raises ShardMissing."""
        deadline = time.monotonic() + self.timeout_s
        reason = "no live replica"
        for _ in range(4):
            picked = await self.workers.pick(shard)
            if picked is None:
                raise ShardMissing(shard, reason)
            name, worker = picked
            try:
                version, *answer = await asyncio.wait_for(_awaited(getattr(worker, method).remote(*args)),
                                                          max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise ShardMissing(shard, f"no answer within serve.shard_timeout_s={self.timeout_s:g}s") from None
            except Exception as exc:  # noqa: BLE001 - a dead or unreachable worker: dropped, the next one asked
                self.workers.drop(shard, name)
                reason = f"{type(exc).__name__} from its last replica"
                continue
            if version != self.version:
                raise ShardMissing(shard, f"answered for index version {version}, not {self.version}")
            return answer[0] if len(answer) == 1 else answer
        raise ShardMissing(shard, f"failed 4 times ({reason})")

    async def hits(self, plan: QueryPlan, queries: np.ndarray, rule: str
                   ) -> tuple[Hits | None, list[int], dict[int, str]]:
        """(merged hits of the shards that answered or None, the shards that answered, missing shard -> why)."""
        count = len(self.workers.apps)
        each = shard_plan(plan, count, rule)
        replies = await asyncio.gather(*(self.ask(i, "search", each, queries) for i in range(count)),
                                       return_exceptions=True)
        answered, missing, parts = [], {}, []
        for i, reply in enumerate(replies):
            if isinstance(reply, BaseException):
                missing[i] = getattr(reply, "reason", type(reply).__name__)
            else:
                answered.append(i)
                parts.append(reply)
        return (merge_hits(parts, plan.k) if parts else None), answered, missing

    async def health(self) -> list[dict[str, Any]]:
        """Each shard's health with its live replicas, or {"shard", "status": "missing", "reason"}."""
        count = len(self.workers.apps)
        replies = await asyncio.gather(*(self.ask(i, "health") for i in range(count)), return_exceptions=True)
        replicas = self.workers.replicas()
        return [{**reply, "replicas": replicas[i]} if not isinstance(reply, BaseException) else
                {"shard": i, "status": "missing", "reason": getattr(reply, "reason", type(reply).__name__)}
                for i, reply in enumerate(replies)]


async def _awaited(response):
    return await response
