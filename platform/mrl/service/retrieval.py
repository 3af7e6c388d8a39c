"""`RetrievalService`: the search service as a plain Python class, usable without Ray or HTTP.

It loads an index artifact, checks the service settings against it once (which modes it can serve), then
answers requests: validate (types by `SearchRequest`, ranges against the index here), build the mode's
`QueryPlan`, run it on the index's `SearchEngine`, and reply with ids, scores, labels and the model and
index versions. A bad request raises `RequestError` with the HTTP status and a message naming the field and
the accepted range; nothing about the service changes, so it keeps answering.

For the search page (`mrl/service/page/`, served at GET / by the app) it also answers `item` (an indexed item
read from the data the index's lineage names, `mrl.service.browse.CorpusItems`) and `calibration` (the index's
calibration table, the curve the page draws), behind the API key like `search`; the page itself is static and
carries no data.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hmac
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from mrl.artifacts.index import IndexArtifact, load_index
from mrl.artifacts.remote import artifact_location, local_copy
from mrl.retrieval.calibrate import plan_for_budget, plan_of
from mrl.retrieval.modes import check_settings, make_plan
from mrl.retrieval.plan import QueryPlan
from mrl.retrieval.sharded import shard_hits, shard_plan, shard_summary
from mrl.runtime import rss_anon_bytes
from mrl.service import embeddings
from mrl.service.api import (MAX_TEXT_CHARS, BatchSearchRequest, EmbeddingsRequest, SearchRequest,
                             validation_detail)
from mrl.service.browse import CorpusItems, ItemsUnavailable
from mrl.service.encoder import check_encoder
from mrl.service.guard import presented_key


class RequestError(ValueError):
    """A request the service refuses: `status` (4xx) and `detail` (what is wrong and what is accepted)."""

    def __init__(self, status: int, detail: Any):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclasses.dataclass
class PlannedBatch:
    """Requests validated and planned (`RetrievalService.plan_batch`): `out` holds each refused request's
    `RequestError` (None where planned), `groups` the planned ones by plan as (position, (1, d) query), `budgets`
    the budget choice of each request that gave one."""

    out: list[Any]
    groups: dict[QueryPlan, list[tuple[int, np.ndarray]]]
    budgets: dict[int, dict[str, Any]]


@dataclasses.dataclass
class ShardedHits:
    """A sharded search's outcome for one plan: the merged `Hits` of the shards that answered (None: none did),
    their numbers, and missing shard -> why."""

    hits: Any
    answered: list[int]
    missing: dict[int, str]


class RetrievalService:
    """Search over one index artifact with the `serve` config's settings.

    Args:
        artifact: a loaded `IndexArtifact` (see `from_path`).
        cfg: the `ServeConfig`.

    Raises:
        PlanError: the settings do not fit the index (sizes above d, or the default mode needs a source the
            index lacks); the message names the setting and the modes the index can serve.
    """

    def __init__(self, artifact: IndexArtifact, cfg, encoder=None, encoder_info: dict[str, Any] | None = None,
                 location: str | None = None):
        """`encoder`: a callable list[bytes | str] -> list[(d,) array | error str] for image (bytes) and text
        (str) queries (a `QueryEncoder`); `encoder_info`: its `describe()`, checked against the index manifest (a
        caller that embeds queries itself, like the Serve deployment, passes only this); `location`: where the
        index is, as deployed (an s3:// URI for an index read through this node's cache), for /healthz and
        `mrl lineage`; None: the artifact's directory."""

        self.artifact, self.cfg = artifact, cfg
        self.encoder = encoder
        self.encoder_info = encoder.describe() if encoder is not None and encoder_info is None else encoder_info
        if self.encoder_info is not None:
            check_encoder(artifact.manifest, self.encoder_info)
        self.engine = artifact.engine
        self.settings = cfg.search
        # Ray Serve runs sync requests on a thread pool: FAISS GPU indexes must not be searched concurrently
        self._gpu_lock = threading.Lock() if self.engine.on_gpu else contextlib.nullcontext()
        self.modes = check_settings(self.settings, cfg.mode, self.engine.source_sizes(), artifact.dim,
                                    cfg.default_k, self.engine.code_keys())
        manifest = artifact.manifest
        self.model_info = {"uri": manifest.get("model_uri"), "name": manifest.get("model_name"),
                           "version": manifest.get("model_version")}
        self.index_info = {"version": artifact.version, "path": location or str(artifact.path),
                           "rows": manifest["rows"], "sizes": manifest["sizes"], "kind": manifest.get("kind"),
                           "codes": manifest.get("codes") or []}
        self.shards = shard_summary(manifest)  # None: a whole index, searched here
        if self.shards is not None:
            self.index_info["shards"] = self.shards
        else:
            self._order = np.argsort(artifact.ids, kind="stable")  # id -> position lookup
        self._key = read_api_key(cfg)
        self._items: CorpusItems | None = None  # opened on the first item request (the data may be elsewhere)
        self._items_lock = threading.Lock()

    @classmethod
    def from_path(cls, index_dir: str, cfg) -> "RetrievalService":
        """Load the index directory (checksums verified; on the GPU when `cfg.device` asks) and serve it."""
        return cls(load_index(local_copy(index_dir), device=cfg.device), cfg, location=artifact_location(index_dir))

    @property
    def rows(self) -> int:
        return int(self.artifact.manifest["rows"])

    def health(self) -> dict[str, Any]:
        """GET /healthz (never needs the API key)."""
        return {"status": "ok", "rows": self.rows, "dim": self.artifact.dim, "model": self.model_info,
                "index": self.index_info, "modes": self.modes,
                "limits": {"max_k": self.max_k, "max_shortlist_k": self.max_shortlist_k,
                           "max_body_bytes": self.cfg.max_body_bytes, "max_embed_inputs": self.cfg.max_embed_inputs,
                           "max_batch_queries": self.cfg.max_batch_queries}, "auth": self._key is not None,
                "encoder": None if self.encoder_info is None else self.encoder_info["model_uri"],
                "queries": self.query_kinds, "budgets": self.budgets, "modality": self.modality,
                "memory": memory_report(self.engine) if self.shards is None else None}

    @property
    def budgets(self) -> dict[str, Any] | None:
        """What budgets can ask for: the calibration table's range (None: the index has no table)."""
        table = self.artifact.manifest.get("calibration")
        if table is None:
            return None
        rows = table["rows"]
        return {"latency_ms": [min(r["p50_ms"] for r in rows), max(r["p50_ms"] for r in rows)],
                "recall": [min(r["recall"] for r in rows), max(r["recall"] for r in rows)], "at_k": table["k"],
                "plans": len(rows)}

    @property
    def modality(self) -> str:
        """What the index's model reads: "image" or "text" (indexes written before text models: "image")."""
        return self.artifact.manifest.get("modality", "image")

    @property
    def query_kinds(self) -> list[str]:
        """The request fields this service answers: vector and id always; image or text with an encoder."""
        return ["vector", "id"] + ([self.modality] if self.encoder_info is not None else [])

    @property
    def max_k(self) -> int:
        return min(self.rows, self.cfg.max_k)

    @property
    def max_shortlist_k(self) -> int:
        return min(self.rows, self.cfg.max_shortlist_k)

    def check_key(self, authorization: str | None) -> None:
        """Raise 401 unless the service has no key or `authorization` carries it (`Bearer <key>`, or HTTP Basic
        with the key as password: `mrl.service.guard.presented_key`)."""
        if self._key is None:
            return
        given = presented_key(authorization)
        if given is None or not hmac.compare_digest(given.encode(), self._key.encode()):
            raise RequestError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")

    def check(self) -> None:
        """Raise when the service cannot answer (Ray Serve's health check)."""
        if not self.rows:
            raise RuntimeError("index is empty")

    def item(self, item_id: int, label: int | None = None) -> dict[str, Any]:
        """GET /items/{id}: an indexed item, read from the data the index's lineage names (`label`: the item's label,
        as its shard answered, for a sharded index; None there: not in the index).

        Returns:
            {"id", "label", "text"} for text corpora; {"id", "label", "png"} (PNG bytes) for image corpora.

        Raises:
            RequestError: 404 for an id that is not in the index; 503 when the items cannot be read here (the
                lineage names no data, the data is not on this machine, or it changed since the index was built).
        """
        if not -2**63 <= item_id < 2**63 or (self.shards is not None and label is None):
            raise RequestError(404, f"id {item_id} is not in the corpus ({self.rows} items)")
        if self.shards is None:
            label = int(self.artifact.labels[self._position(item_id)])
        try:
            with self._items_lock:
                if self._items is None:
                    self._items = CorpusItems(self.artifact.manifest)
            return self._items.read(item_id, label)
        except ItemsUnavailable as exc:
            raise RequestError(503, f"item {item_id} is in the index, but its data cannot be read here: {exc}") from None

    def calibration(self) -> dict[str, Any]:
        """GET /calibration: the index's calibration table {"k", "queries", "rows": [{"setting", "recall",
        "p50_ms"}]} (the plans budgets choose from), or 404 when the index has none."""
        table = self.artifact.manifest.get("calibration")
        if table is None:
            raise RequestError(404, "this index has no calibration table; rebuild it with index.calibrate: true")
        return table

    def models(self) -> dict[str, Any]:
        """GET /v1/models (OpenAI's list): the one model this service embeds with, or none without an encoder."""
        served = [] if self.encoder_info is None else [self.encoder_info["model_uri"]]
        return {"object": "list", "data": [{"id": uri, "object": "model", "created": 0, "owned_by": "mrl"}
                                           for uri in served]}

    def embedding_inputs(self, request: EmbeddingsRequest | dict[str, Any]) -> tuple[list[bytes | str], int]:
        """POST /v1/embeddings before the model runs: the inputs to embed (texts, or decoded image bytes) and the
        prefix length m to return (`mrl.service.embeddings`).

        Raises:
            RequestError: 404 without an encoder or for another model; 422 for a malformed request, a size that
                is not a nesting size (listing them), too many inputs, or an input that is not the model's kind.
        """
        parsed = self.parse(request, EmbeddingsRequest)
        if self.encoder_info is None:
            raise RequestError(404, "this service embeds nothing: it runs without the index's model (serve.encoder "
                                    "is off, or the index manifest names no model)")
        info = self.encoder_info
        try:
            embeddings.check_model(parsed.model, embeddings.served_names(info["model_uri"], self.model_info["name"]))
            size = embeddings.check_size(parsed.dimensions, list(info["sizes"]), info["dim"])
            inputs = embeddings.as_inputs(parsed.input, self.modality, self.cfg.max_embed_inputs, MAX_TEXT_CHARS)
        except embeddings.EmbeddingsRefused as exc:
            raise RequestError(exc.status, exc.detail) from None
        return inputs, size

    def embeddings_reply(self, request: EmbeddingsRequest | dict[str, Any], vectors: list[np.ndarray | str],
                         size: int, tokens: list[int]) -> dict[str, Any]:
        """The OpenAI-shaped reply for the embedded inputs and the tokens the model read for each (422 naming any
        input the model could not read)."""
        parsed = self.parse(request, EmbeddingsRequest)
        try:
            return embeddings.reply(vectors, size, parsed.encoding_format, self.encoder_info["model_uri"], tokens)
        except embeddings.EmbeddingsRefused as exc:
            raise RequestError(exc.status, exc.detail) from None

    def embed(self, request: EmbeddingsRequest | dict[str, Any]) -> dict[str, Any]:
        """POST /v1/embeddings with this service's own encoder (a `QueryEncoder`; no Ray, no HTTP)."""
        parsed = self.parse(request, EmbeddingsRequest)  # once: both calls below take the parsed request as is
        inputs, size = self.embedding_inputs(parsed)
        if self.encoder is None:
            raise RequestError(503, "this service has the model's description but not the model: embed through "
                                    "the Serve deployment's encoder")
        vectors, tokens = self.encoder.embed(inputs)
        return self.embeddings_reply(parsed, vectors, size, tokens)

    def plan(self, mode: str, k: int, shortlist_k: int | None = None) -> QueryPlan:
        """The plan a request for `mode`, k results and an optional shortlist length runs."""
        settings = self.settings
        if shortlist_k is not None:
            settings = dataclasses.replace(settings, shortlist_k=shortlist_k)
        return make_plan(mode, settings, self.artifact.dim, k)

    def search(self, request: SearchRequest | dict[str, Any]) -> dict[str, Any]:
        """POST /search: answer one request.

        Raises:
            RequestError: 422 for a malformed or out-of-range request, 404 for an unknown corpus id.
        """
        reply = self.search_batch([request])[0]
        if isinstance(reply, RequestError):
            raise reply
        return reply

    def pending_content(self, requests: list[SearchRequest | dict[str, Any]]
                        ) -> tuple[dict[int, RequestError], dict[int, bytes | str]]:
        """The content requests (image or text) among `requests`, by position: those already answered (bad
        base64, the wrong kind for the index's model, or no encoder anywhere) and what is still to embed:
        decoded image bytes, or the text.

        The caller embeds them (this service's own `encoder`, or the Serve deployment's encoder) and hands both
        to `search_batch` as `embedded`."""
        done: dict[int, RequestError] = {}
        todo: dict[int, bytes | str] = {}
        for i, request in enumerate(requests):
            parsed = self._parse_or_error(request)
            if isinstance(parsed, RequestError) or (parsed.image is None and parsed.text is None):
                continue  # a malformed request is answered by search_batch
            if parsed.image is not None and parsed.text is not None:
                continue  # two queries in one: search_batch names the rule
            kind = "image" if parsed.image is not None else "text"
            if kind != self.modality:
                done[i] = RequestError(422, f"this index's model reads {self.modality}, not {kind}: send "
                                            f"'{self.modality}', 'vector' or 'id'")
                continue
            if kind == "text":
                todo[i] = parsed.text
                continue
            try:
                todo[i] = base64.b64decode(parsed.image, validate=True)
            except (binascii.Error, ValueError):
                done[i] = RequestError(422, "image is not valid base64")
        if todo and self.encoder is None and self.encoder_info is None:
            done.update({i: RequestError(422, f"this service has no encoder: {self.modality} queries need the model "
                                              "the index was built with (the index manifest names none)")
                         for i in todo})
            todo = {}
        return done, todo

    def search_many(self, request: BatchSearchRequest | dict[str, Any]) -> dict[str, Any]:
        """POST /search with a batch (`queries` or a `vectors` matrix): `batch_requests`, then `search_batch`, then
        `batch_reply`. Raises RequestError (422) only for a batch that is malformed as a whole."""
        started = time.perf_counter()
        return self.batch_reply(self.search_batch(self.batch_requests(request)), started)

    def batch_requests(self, request: BatchSearchRequest | dict[str, Any]) -> list[SearchRequest | dict[str, Any]]:
        """A batch as the single requests `search_batch` answers, in order: each of `queries` with the batch's k
        where it sets none and the batch's plan (mode, shortlist_k, budget) where it sets none of these (each
        validated later, alone), or one request per row of
        the `vectors` matrix (decoded and checked here: dtype, shape [n, d], byte count, finite values).

        Raises:
            RequestError: 422 for neither or both of queries / vectors, no queries, more than
                serve.max_batch_queries, or a matrix that does not match its shape or holds NaN / infinity.
        """
        parsed = self.parse(request, BatchSearchRequest)
        if (parsed.queries is None) == (parsed.vectors is None):
            raise RequestError(422, "a batch gives exactly one of 'queries' (a list of single requests) or "
                                    "'vectors' (one binary matrix)")
        shared = {name: getattr(parsed, name) for name in ("k", "shortlist_k", "mode", "budget")
                  if getattr(parsed, name) is not None}
        count = len(parsed.queries) if parsed.queries is not None else parsed.vectors.shape[0]
        if not 1 <= count <= self.cfg.max_batch_queries:
            raise RequestError(422, f"a batch holds {count} queries; the accepted range is [1, "
                                    f"{self.cfg.max_batch_queries}] (serve.max_batch_queries)")
        if parsed.queries is not None:  # the plan fields (mode, shortlist_k, budget) go as a group: a query's own
            plain = {name: (value.model_dump(exclude_none=True) if name == "budget" else value)
                     for name, value in shared.items()}
            plan_fields = {"mode", "shortlist_k", "budget"}
            return [{**{n: v for n, v in plain.items() if n == "k" or not plan_fields & query.keys()}, **query}
                    for query in parsed.queries]
        rows = self._matrix(parsed.vectors)
        return [SearchRequest.model_construct(vector=row, **shared) for row in rows]

    def _matrix(self, matrix) -> np.ndarray:
        """(n, d) float32 from a `VectorMatrix` (422 naming what does not match)."""
        n, d = matrix.shape
        if d != self.artifact.dim:
            raise RequestError(422, f"vectors.shape is [{n}, {d}]; this index expects d={self.artifact.dim}")
        dtype = np.dtype("<f4" if matrix.dtype == "float32" else "<f2")
        try:
            raw = base64.b64decode(matrix.data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(422, "vectors.data is not valid base64") from None
        if len(raw) != n * d * dtype.itemsize:
            raise RequestError(422, f"vectors.data holds {len(raw)} bytes; shape [{n}, {d}] of {matrix.dtype} needs "
                                    f"{n * d * dtype.itemsize}")
        rows = np.frombuffer(raw, dtype=dtype).reshape(n, d).astype(np.float32)
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        if bad.size:
            raise RequestError(422, f"vectors rows {bad[:10].tolist()} hold NaN or infinity; finite values only")
        return rows

    def batch_reply(self, replies: list[dict[str, Any] | RequestError], started: float) -> dict[str, Any]:
        """The reply to a batch: per query, in order, its ids, scores, labels and the plan that ran, or its
        status and reason; the model and index once."""
        results = []
        for i, reply in enumerate(replies):
            if isinstance(reply, RequestError):
                results.append({"index": i, "status": reply.status, "detail": reply.detail})
                continue
            results.append({key: reply[key] for key in ("ids", "scores", "labels", "search", "budget") if key in reply})
        return {"results": results, "model": self.model_info, "index": self.index_info,
                "failed": sum("status" in r for r in results), "took_ms": 1000 * (time.perf_counter() - started)}

    def search_batch(self, requests: list[SearchRequest | dict[str, Any]],
                     embedded: dict[int, np.ndarray | str] | None = None) -> list[dict[str, Any] | RequestError]:
        """Answer many requests at once (Ray Serve's dynamic batching hands them over together): each is
        validated alone, requests with the same plan are searched in one engine run, and each gets its reply
        or its own `RequestError`, in order.

        Args:
            embedded: the embeddings of the image and text requests by position, when the caller ran the encoder
                (the Serve deployment does, through its encoder deployment); else this service's own `encoder`.
        """
        started = time.perf_counter()
        if embedded is None:
            embedded, todo = self.pending_content(requests)
            if todo:
                embedded.update(zip(todo, self.encoder(list(todo.values()))))
        batch = self.plan_batch(requests, embedded)
        hits = {}
        for plan, members in batch.groups.items():
            with self._gpu_lock:  # FAISS GPU indexes must not be searched from two threads at once
                hits[plan] = shard_hits(self.artifact, plan, np.concatenate([q for _, q in members]))
        return self.reply_batch(batch, hits, started)

    def plan_batch(self, requests: list[SearchRequest | dict[str, Any]],
                   embedded: dict[int, Any] | None = None) -> "PlannedBatch":
        """The validation and planning half of `search_batch`: each request's error, or its plan and (1, d) query,
        grouped by plan. `embedded`: position -> the query vector of an image or text request, or of an id request
        whose row the caller fetched (a sharded index: its shard holds the row), or a `RequestError`."""
        parsed = [self._parse_or_error(request) for request in requests]  # each request validated once
        batch = PlannedBatch([None] * len(requests), {}, {})
        for i, request in enumerate(parsed):
            try:
                if isinstance(request, RequestError):
                    raise request
                plan, query, budget = self._prepare(request, (embedded or {}).get(i))
                if budget is not None:
                    batch.budgets[i] = budget
            except RequestError as exc:
                batch.out[i] = exc
                continue
            except ValueError as exc:  # a plan these request values cannot make: this request's problem alone
                batch.out[i] = RequestError(422, str(exc))
                continue
            batch.groups.setdefault(plan, []).append((i, query))
        return batch

    def id_queries(self, requests: list[SearchRequest | dict[str, Any]]) -> dict[int, int]:
        """Position -> corpus id of the requests that query by id (a sharded index fetches those rows first)."""
        out = {}
        for i, request in enumerate(requests):
            parsed = self._parse_or_error(request)
            if not isinstance(parsed, RequestError) and parsed.id is not None:
                out[i] = parsed.id
        return out

    def reply_batch(self, batch: "PlannedBatch", hits: dict[QueryPlan, Any], started: float
                    ) -> list[dict[str, Any] | RequestError]:
        """The search half of `search_batch`: each planned request's reply from its plan's `Hits` (or, for a sharded
        index, a `ShardedHits`: the hits of the shards that answered, which and why the others did not)."""
        out = list(batch.out)
        for plan, members in batch.groups.items():
            found = hits[plan]
            shards = None
            if self.shards is not None:
                per_shard = shard_plan(plan, self.shards["count"], self.shards["rule"])
                shards = {"answered": len(found.answered), "of": self.shards["count"],
                          "missing": sorted(found.missing), "rule": self.shards["rule"],
                          "shortlist_k": per_shard.shortlist.k}  # what each shard shortlisted
                if found.hits is None or (found.missing and self.cfg.on_missing_shard == "fail"):
                    error = RequestError(503, f"shards {sorted(found.missing)} of {self.shards['count']} did not "
                                              f"answer ({'; '.join(found.missing.values())}); retry later "
                                              "(serve.on_missing_shard: partial answers from the others)")
                    for i, _ in members:
                        out[i] = error
                    continue
                found = found.hits
            for row, (i, _) in enumerate(members):
                keep = found.ids[row] >= 0
                out[i] = {"ids": found.ids[row][keep].tolist(), "scores": found.scores[row][keep].tolist(),
                          "labels": found.labels[row][keep].tolist(), "model": self.model_info,
                          "index": self.index_info, "search": plan.describe(),
                          "vector_bytes": int(found.vector_bytes[row]),  # read from the full vectors for this query
                          "took_ms": 1000 * (time.perf_counter() - started), "batch": len(members)}
                if shards is not None:
                    out[i]["shards"] = shards
                    out[i]["partial"] = bool(shards["missing"])
                if i in batch.budgets:
                    out[i]["budget"] = batch.budgets[i]
        return out

    def _budget_choice(self, request: SearchRequest) -> dict[str, Any]:
        """The calibration row a request's budget picks (422 when the index has no table)."""

        table = self.artifact.manifest.get("calibration")
        if table is None:
            raise RequestError(422, "this index has no calibration table, so it cannot honour a budget; rebuild it "
                                    "with index.calibrate: true (and a test split beside the embeddings)")
        budget = request.budget.model_dump(exclude_none=True)
        if len(budget) != 1:
            raise RequestError(422, "budget takes exactly one of 'latency_ms' or 'recall'")
        chosen = plan_for_budget(table, budget)
        return {"asked": budget, "calibrated": {"recall": chosen["recall"], "p50_ms": chosen["p50_ms"],
                                                "at_k": table["k"]},
                "met": chosen["met"], "setting": chosen["setting"]}

    def _prepare(self, request: SearchRequest, embedded=None
                 ) -> tuple[QueryPlan, np.ndarray, dict[str, Any] | None]:
        """The plan, the (1, d) query and the budget choice (None without a budget) of one validated request
        (`embedded`: its image's or text's embedding)."""
        if sum(x is not None for x in (request.vector, request.id, request.image, request.text)) != 1:
            raise RequestError(422, f"give exactly one of 'vector' (length d={self.artifact.dim}), 'id' (a corpus "
                                    f"id) or '{self.modality}'" + (" (base64)" if self.modality == "image" else ""))
        k = self.cfg.default_k if request.k is None else request.k
        self._in_range("k", k, self.max_k, "serve.max_k")
        budget = None
        if request.budget is not None:
            if request.mode is not None or request.shortlist_k is not None:
                raise RequestError(422, "a budget chooses the plan: give either budget or mode / shortlist_k")

            budget = self._budget_choice(request)
            setting = budget["setting"]
            if setting.get("shortlist_k", k) < k:
                setting = {**setting, "shortlist_k": k}
            mode, plan = setting["mode"], plan_of(setting, self.artifact.dim, k)
        else:
            mode = request.mode or self.cfg.mode
            if mode not in self.modes:
                raise RequestError(422, f"mode {mode!r} is not available on this index; choose one of {self.modes}")
            if request.shortlist_k is not None:
                self._in_range("shortlist_k", request.shortlist_k, self.max_shortlist_k, "serve.max_shortlist_k")
            plan = self.plan(mode, k, request.shortlist_k)
        vector = request.vector
        if request.image is not None or request.text is not None:
            if isinstance(embedded, RequestError):
                raise embedded
            if embedded is None or isinstance(embedded, str):
                raise RequestError(422, embedded or "the query was not embedded")
            vector = embedded  # (d,) from the encoder
        if vector is not None:
            return plan, self._vector_query(vector, self.engine.smallest_prefix(plan), mode), budget
        if self.shards is not None:  # the row, as its shard answered it (or why not)
            if isinstance(embedded, RequestError):
                raise embedded
            return plan, np.asarray(embedded, dtype=np.float32)[None], budget
        return plan, np.asarray(self.artifact.vectors[self._position(request.id)], dtype=np.float32)[None], budget

    @staticmethod
    def parse(request: Any, model: type = SearchRequest) -> Any:
        """A `model` (`SearchRequest`, `EmbeddingsRequest`) from one or from a raw JSON object (422 naming each bad
        field)."""
        if isinstance(request, model):
            return request
        from pydantic import ValidationError

        try:
            return model.model_validate(request)
        except ValidationError as exc:
            raise RequestError(422, validation_detail(exc)) from None

    @classmethod
    def _parse_or_error(cls, request: SearchRequest | dict[str, Any]) -> SearchRequest | RequestError:
        try:
            return cls.parse(request)
        except RequestError as exc:
            return exc

    def _in_range(self, name: str, value: int, high: int, limit: str) -> None:
        if not 1 <= value <= high:
            bound = "the corpus size" if high == self.rows else limit
            raise RequestError(422, f"{name}={value} is outside the accepted range [1, {high}] ({bound})")

    def _vector_query(self, vector, smallest: int, mode: str) -> np.ndarray:
        """(1, d) float32 from a request's list of floats or an encoder's (d,) array, checked."""
        dim = self.artifact.dim
        if len(vector) != dim:
            raise RequestError(422, f"vector has length {len(vector)}; this index expects d={dim}")
        with np.errstate(over="ignore"):
            query = np.asarray(vector, dtype=np.float32)[None]  # (1, d)
        if not np.isfinite(query).all():
            raise RequestError(422, "vector has values beyond float32's range (|x| > 3.4e38)")
        if not np.any(query[:, :smallest]):
            raise RequestError(422, f"vector is zero on its first {smallest} values, the prefix {mode!r} search "
                                    "starts from; it has no direction to search with")
        return query

    def _position(self, item_id: int) -> int:
        ids = self.artifact.ids
        at = int(np.searchsorted(ids, item_id, sorter=self._order))
        if at >= len(ids) or ids[self._order[at]] != item_id:
            raise RequestError(404, f"id {item_id} is not in the corpus ({len(ids)} items)")
        return int(self._order[at])


def read_api_key(cfg) -> str | None:
    """The service's API key from `serve.api_key_env` or `serve.api_key_file`, or None when neither is set.

    Raises:
        ValueError: the variable is unset or empty, the file is missing or empty (the service refuses to start
            open when a key was asked for), or the key is shorter than MIN_KEY_CHARS.
    """
    if cfg.api_key_env:
        key, where = os.environ.get(cfg.api_key_env, "").strip(), f"serve.api_key_env names {cfg.api_key_env}, which"
        if not key:
            raise ValueError(f"{where} is not set (or empty) here")
    elif cfg.api_key_file:
        path = Path(cfg.api_key_file)
        key = path.read_text().splitlines()[0].strip() if path.is_file() and path.read_text().strip() else ""
        where = f"serve.api_key_file {str(path)!r}"
        if not key:
            raise ValueError(f"{where} is missing or empty")
    else:
        return None
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(f"{where} holds a key of {len(key)} characters; use at least {MIN_KEY_CHARS} (e.g. the "
                         "output of: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return key


MIN_KEY_CHARS = 16


def memory_report(engine) -> dict[str, Any]:
    """What the replica holds for its index (GET /healthz: memory): the bytes of the structures it keeps in its
    own memory (FAISS indexes, AdANNS cells, codes; the full vectors too unless memory-mapped) in all and per
    row, the size of the memory-mapped vector file (file pages: the kernel caches and drops them), and the
    process's anonymous resident memory now (Linux; everything the process holds that is not file pages, Python
    and the model included)."""
    rows = max(1, len(engine))
    held = engine.resident_bytes()
    store = engine.store
    return {"structures_bytes": held, "bytes_per_vector": held / rows,
            "vector_file_bytes": int(store.vectors.nbytes) if store.mapped else 0,
            "process_rss_anon_bytes": rss_anon_bytes()}
