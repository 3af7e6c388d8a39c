"""`RetrievalService`: the search service as a plain Python class, usable without Ray or HTTP.

It loads an index artifact, checks the service settings against it once (which modes it can serve), then
answers requests: validate (types by `SearchRequest`, ranges against the index here), build the mode's
`QueryPlan`, run it on the index's `SearchEngine`, and reply with ids, scores, labels and the model and
index versions. A bad request raises `RequestError` with the HTTP status and a message naming the field and
the accepted range; nothing about the service changes, so it keeps answering.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from typing import Any

import numpy as np

from mrl.retrieval.artifact import IndexArtifact, load_index
from mrl.retrieval.modes import check_settings, make_plan
from mrl.retrieval.plan import QueryPlan
from mrl.service.api import SearchRequest, validation_detail


class RequestError(ValueError):
    """A request the service refuses: `status` (4xx) and `detail` (what is wrong and what is accepted)."""

    def __init__(self, status: int, detail: Any):
        super().__init__(detail)
        self.status, self.detail = status, detail


class RetrievalService:
    """Search over one index artifact with the `serve` config's settings.

    Args:
        artifact: a loaded `IndexArtifact` (see `from_path`).
        cfg: the `ServeConfig`.

    Raises:
        PlanError: the settings do not fit the index (sizes above d, or the default mode needs a source the
            index lacks); the message names the setting and the modes the index can serve.
    """

    def __init__(self, artifact: IndexArtifact, cfg):
        self.artifact, self.cfg = artifact, cfg
        self.engine = artifact.engine
        self.settings = cfg.search_settings()
        # Ray Serve runs sync requests on a thread pool: FAISS GPU indexes must not be searched concurrently
        self._gpu_lock = threading.Lock() if self.engine.on_gpu else contextlib.nullcontext()
        self.modes = check_settings(self.settings, cfg.mode, self.engine.source_sizes(), artifact.dim,
                                    cfg.default_k)
        manifest = artifact.manifest
        self.model_info = {"uri": manifest.get("model_uri"), "name": manifest.get("model_name"),
                           "version": manifest.get("model_version")}
        self.index_info = {"version": artifact.version, "path": str(artifact.path), "rows": manifest["rows"],
                           "sizes": manifest["sizes"]}
        self._order = np.argsort(artifact.ids, kind="stable")  # id -> position lookup

    @classmethod
    def from_path(cls, index_dir: str, cfg) -> "RetrievalService":
        """Load the index directory (checksums verified; on the GPU when `cfg.device` asks) and serve it."""
        return cls(load_index(index_dir, device=cfg.device), cfg)

    @property
    def rows(self) -> int:
        return len(self.artifact.ids)

    def health(self) -> dict[str, Any]:
        """GET /healthz."""
        return {"status": "ok", "rows": self.rows, "dim": self.artifact.dim, "model": self.model_info,
                "index": self.index_info, "modes": self.modes}

    def check(self) -> None:
        """Raise when the service cannot answer (Ray Serve's health check)."""
        if not self.rows:
            raise RuntimeError("index is empty")

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
        started = time.perf_counter()
        request = self.parse(request)
        mode = request.mode or self.cfg.mode
        if mode not in self.modes:
            raise RequestError(422, f"mode {mode!r} is not available on this index; choose one of {self.modes}")
        if (request.vector is None) == (request.id is None):
            raise RequestError(422, f"give exactly one of 'vector' (length d={self.artifact.dim}) or 'id' "
                                    "(a corpus id)")
        k = self.cfg.default_k if request.k is None else request.k
        self._in_range("k", k)
        if request.shortlist_k is not None:
            self._in_range("shortlist_k", request.shortlist_k)
        plan = self.plan(mode, k, request.shortlist_k)
        if request.vector is not None:
            query = self._vector_query(request.vector, self.engine.smallest_prefix(plan), mode)
        else:
            query = np.asarray(self.artifact.vectors[self._position(request.id)], dtype=np.float32)[None]
        with self._gpu_lock:
            result = self.engine.run(plan, query)
        keep = result.positions[0] >= 0
        pos = result.positions[0][keep]
        return {"ids": self.artifact.ids[pos].tolist(), "scores": result.scores[0][keep].tolist(),
                "labels": self.artifact.labels[pos].tolist(), "model": self.model_info, "index": self.index_info,
                "search": plan.describe(), "took_ms": 1000 * (time.perf_counter() - started)}

    @staticmethod
    def parse(request: SearchRequest | dict[str, Any]) -> SearchRequest:
        """A `SearchRequest` from a request model or a raw JSON object (422 naming each bad field)."""
        if isinstance(request, SearchRequest):
            return request
        from pydantic import ValidationError

        try:
            return SearchRequest.model_validate(request)
        except ValidationError as exc:
            raise RequestError(422, validation_detail(exc)) from None

    def _in_range(self, name: str, value: int) -> None:
        if not 1 <= value <= self.rows:
            raise RequestError(422, f"{name}={value} is outside the accepted range [1, {self.rows}]")

    def _vector_query(self, vector: list[float], smallest: int, mode: str) -> np.ndarray:
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
