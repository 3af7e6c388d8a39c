"""The serve stage: adaptive retrieval behind HTTP with Ray Serve (FastAPI ingress).

    POST /search  {"vector": [d floats]} or {"id": corpus id}, optional "k", "shortlist_k", "mode"
                  -> {"ids", "scores", "labels", "model": {...}, "index": {...}, "search": {...}}
    GET  /healthz -> {"status": "ok", "rows", "dim", "model", "index", "modes"}

Modes (`serve.mode` is the default; a request may name another the index supports):
- adaptive: the prefix z[:D_s] shortlists K candidates through the FAISS index of size D_s; they are reranked
  exactly with the normalised prefix z[:D_r] (D_r = d by default);
- funnel: the same shortlist, then exact reranks through growing prefixes and shrinking shortlists;
- adanns: the members of the query's nearest AdANNS cells are scored with D_s, then the funnel;
- full: one search of the size-d index (exact when the index kind is flat).
Reranking reads the index's stored vectors (float16 or float32, memory-mapped).
Bad requests get a 4xx naming the problem; the replica keeps serving.

`app_builder` is the import path for `serve run` / Serve config files: `mrl.serve:app_builder`.
"""


import time
from pathlib import Path
from typing import Any


def _request_models():
    from typing import Annotated, Literal

    from pydantic import BaseModel, ConfigDict, Field

    FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        vector: list[FiniteFloat] | None = Field(None, description="query embedding of length d (raw, any norm)")
        id: int | None = Field(None, description="id of a corpus item to use as the query")
        k: int | None = Field(None, description="results to return, in [1, corpus rows]")
        shortlist_k: int | None = Field(None, description="shortlist length K (>= k)")
        mode: Literal["adaptive", "funnel", "adanns", "full"] | None = Field(
            None, description="search mode; default: the service's serve.mode")

    return SearchRequest


def build_retriever(index_dir: str, serve_cfg: dict[str, Any]):
    """The Serve deployment (FastAPI ingress) over an index directory. Built lazily: no import-time work."""
    import numpy as np
    from fastapi import FastAPI, HTTPException
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from ray import serve

    from mrl.config import ServeConfig
    from mrl.configio import from_dict

    cfg = from_dict(ServeConfig, serve_cfg, prefix="serve.")
    SearchRequest = _request_models()
    app = FastAPI(title="MRL adaptive retrieval", version="1")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        # FastAPI's default handler echoes the input back, which fails (500) when it holds NaN or inf.
        detail = [{"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
                  for err in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    @serve.deployment(name="Retriever", num_replicas=cfg.num_replicas,
                      ray_actor_options={"num_cpus": 1, "num_gpus": cfg.gpus_per_replica},
                      max_ongoing_requests=16, health_check_period_s=10)
    @serve.ingress(app)
    class Retriever:
        def __init__(self, index_dir: str, cfg: ServeConfig):
            import faiss

            from mrl.index import load_index

            import torch

            faiss.omp_set_num_threads(1)  # one CPU per replica
            torch.set_num_threads(1)
            self.cfg = cfg
            self.artifact = load_index(index_dir, device=cfg.device)
            dim = self.artifact.dim
            self.rerank_size = cfg.rerank_size or dim
            if cfg.shortlist_size not in self.artifact.indexes:
                raise ValueError(f"serve.shortlist_size {cfg.shortlist_size} is not an indexed size "
                                 f"{sorted(self.artifact.indexes)} of {index_dir}")
            if self.rerank_size > dim:
                raise ValueError(f"serve.rerank_size {self.rerank_size} is above d={dim}")
            too_big = [m for m, _ in cfg.funnel or () if m is not None and m > dim]
            if too_big:
                raise ValueError(f"serve.funnel sizes {too_big} are above d={dim}")
            self.modes = ["adaptive", "funnel"] + (["adanns"] if self.artifact.adanns is not None else []) \
                + (["full"] if dim in self.artifact.indexes else [])
            if cfg.mode not in self.modes:
                raise ValueError(f"serve.mode {cfg.mode!r} is not available for {index_dir}: it supports "
                                 f"{self.modes} (adanns needs index.adanns_size; full needs an index at d={dim})")
            for index in self.artifact.indexes.values():  # search-time knobs of IVF / HNSW indexes
                if cfg.nprobe is not None and hasattr(index, "nprobe"):
                    index.nprobe = cfg.nprobe
                if cfg.ef_search is not None and hasattr(index, "hnsw"):
                    index.hnsw.efSearch = cfg.ef_search
            manifest = self.artifact.manifest
            self.model_info = {"uri": manifest.get("model_uri"), "name": manifest.get("model_name"),
                               "version": manifest.get("model_version")}
            self.index_info = {"version": self.artifact.version, "path": str(self.artifact.path),
                               "rows": manifest["rows"], "sizes": manifest["sizes"]}
            self.order = np.argsort(self.artifact.ids, kind="stable")  # id -> position lookup

        def _position(self, item_id: int) -> int:
            ids = self.artifact.ids
            at = int(np.searchsorted(ids, item_id, sorter=self.order))
            if at >= len(ids) or ids[self.order[at]] != item_id:
                raise HTTPException(status_code=404, detail=f"id {item_id} is not in the corpus "
                                                            f"({len(ids)} items)")
            return int(self.order[at])

        @app.get("/healthz")
        def healthz(self) -> dict[str, Any]:
            return {"status": "ok", "rows": int(len(self.artifact.ids)), "dim": self.artifact.dim,
                    "model": self.model_info, "index": self.index_info, "modes": self.modes}

        def _stages(self, k: int, shortlist_k: int) -> list[tuple[int, int]]:
            """The funnel's rerank stages for this request: configured or default, keeps never below k."""
            from mrl.search import default_funnel

            dim = self.artifact.dim
            if self.cfg.funnel is None:
                return default_funnel(self.cfg.shortlist_size, shortlist_k, dim, k)
            return [(m or dim, min(shortlist_k, max(k, keep))) for m, keep in self.cfg.funnel]

        def _smallest_prefix(self, mode: str) -> int:
            """The smallest prefix a `mode` search reads (prefixes nest: a vector nonzero there is nonzero on
            every larger one)."""
            if mode == "full":
                return self.artifact.dim
            if mode == "adanns":
                return min(self.cfg.shortlist_size, self.artifact.adanns.cluster_size)
            return self.cfg.shortlist_size

        def _run(self, mode: str, query, k: int, shortlist_k: int):
            """(scores, positions, description) of one query under `mode`."""
            from mrl.search import adaptive_search, faiss_search, funnel_search, rerank_stages

            art, d_s = self.artifact, self.cfg.shortlist_size
            if mode == "full":
                scores, positions = faiss_search(art.indexes[art.dim], query, art.dim, k)
                return scores, positions, {"size": art.dim}
            if mode == "adaptive":
                scores, positions = adaptive_search(art.indexes[d_s], art.store, query, d_s, shortlist_k,
                                                    self.rerank_size, k)
                return scores, positions, {"shortlist_size": d_s, "shortlist_k": shortlist_k,
                                           "rerank_size": self.rerank_size}
            stages = self._stages(k, shortlist_k)
            if mode == "funnel":
                scores, positions = funnel_search(art.indexes[d_s], art.store, query, [(d_s, shortlist_k), *stages])
            else:  # adanns: cells on their own prefix, members scored with D_s, then the funnel
                candidates = art.adanns.candidates(query, self.cfg.nprobe)
                scores, positions = rerank_stages(candidates, art.store, query, [(d_s, shortlist_k), *stages])
            scores, positions = scores[:, :k], positions[:, :k]
            return scores, positions, {"shortlist_size": d_s, "shortlist_k": shortlist_k,
                                       "stages": [list(st) for st in stages]}

        @app.post("/search")
        def search(self, request: SearchRequest) -> dict[str, Any]:
            started = time.perf_counter()
            rows, dim = len(self.artifact.ids), self.artifact.dim
            mode = request.mode or self.cfg.mode
            if mode not in self.modes:
                raise HTTPException(status_code=422, detail=f"mode {mode!r} is not available on this index; "
                                                            f"choose one of {self.modes}")
            if (request.vector is None) == (request.id is None):
                raise HTTPException(status_code=422, detail="give exactly one of 'vector' (length d="
                                                            f"{dim}) or 'id' (a corpus id)")
            k = self.cfg.default_k if request.k is None else request.k
            if not 1 <= k <= rows:
                raise HTTPException(status_code=422, detail=f"k={k} is outside the accepted range [1, {rows}]")
            shortlist_k = max(k, self.cfg.shortlist_k if request.shortlist_k is None else request.shortlist_k)
            if request.shortlist_k is not None and not 1 <= request.shortlist_k <= rows:
                raise HTTPException(status_code=422, detail=f"shortlist_k={request.shortlist_k} is outside "
                                                            f"the accepted range [1, {rows}]")
            if request.vector is not None:
                if len(request.vector) != dim:
                    raise HTTPException(status_code=422, detail=f"vector has length {len(request.vector)}; "
                                                                f"this index expects d={dim}")
                with np.errstate(over="ignore"):
                    query = np.asarray(request.vector, dtype=np.float32)[None]  # (1, d)
                if not np.isfinite(query).all():
                    raise HTTPException(status_code=422, detail="vector has values beyond float32's range "
                                                                "(|x| > 3.4e38)")
                smallest = self._smallest_prefix(mode)
                if not np.any(query[:, :smallest]):
                    raise HTTPException(status_code=422, detail=f"vector is zero on its first {smallest} "
                                                                f"values, the prefix {mode!r} search starts "
                                                                "from; it has no direction to search with")
            else:
                query = np.asarray(self.artifact.vectors[self._position(request.id)], dtype=np.float32)[None]
            scores, positions, described = self._run(mode, query, k, shortlist_k)
            keep = positions[0] >= 0
            pos = positions[0][keep]
            return {"ids": self.artifact.ids[pos].tolist(), "scores": scores[0][keep].tolist(),
                    "labels": self.artifact.labels[pos].tolist(), "model": self.model_info,
                    "index": self.index_info, "search": {"mode": mode, **described, "k": k},
                    "took_ms": 1000 * (time.perf_counter() - started)}

        def check_health(self) -> None:
            if not len(self.artifact.ids):
                raise RuntimeError("index is empty")

    return Retriever.bind(str(Path(index_dir).resolve()), cfg)


def app_builder(args: dict[str, Any]):
    """Serve application builder: args = {"index_dir": path, **ServeConfig fields}."""
    args = dict(args)
    index_dir = args.pop("index_dir", "outputs/index/latest")
    return build_retriever(index_dir, args)


def run_serve(index_dir: str, serve_cfg, mlflow_cfg, output_dir: str, blocking: bool = False) -> dict[str, Any]:
    """Deploy the service on the current Ray cluster and record a `deploy` run in MLflow.

    Returns:
        {"url", "run_id", "index_version"}.
    """
    import mlflow
    from ray import serve

    from mrl import tracking
    from mrl.configio import to_dict
    from mrl.embed import read_manifest

    manifest = read_manifest(index_dir)
    tracking.setup(mlflow_cfg, output_dir)
    serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port})
    serve.run(build_retriever(index_dir, to_dict(serve_cfg)), name="mrl", route_prefix="/", blocking=False)
    url = f"http://{serve_cfg.host}:{serve_cfg.port}"
    with mlflow.start_run(run_name="deploy", tags={"mrl.stage": "deploy",
                                                   "mrl.input_run_id": manifest.get("index_run_id", ""),
                                                   "mrl.input_uri": str(Path(index_dir).resolve()),
                                                   "mrl.url": url}) as run:
        tracking.log_params({"serve": to_dict(serve_cfg), "index_dir": str(Path(index_dir).resolve()),
                             "model_uri": manifest.get("model_uri")})
    print(f"[serve] retrieval at {url}/search (default mode {serve_cfg.mode}; D_s={serve_cfg.shortlist_size}, "
          f"K={serve_cfg.shortlist_k}, D_r={serve_cfg.rerank_size or manifest['dim']})", flush=True)
    if blocking:
        print("[serve] serving until Ctrl-C", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return {"url": url, "run_id": run.info.run_id, "index_version": manifest.get("index_run_id")}
