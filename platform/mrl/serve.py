"""The serve stage: adaptive retrieval behind HTTP with Ray Serve (FastAPI ingress).

    POST /search  {"vector": [d floats]} or {"id": corpus id}, optional "k", "shortlist_k"
                  -> {"ids", "scores", "labels", "model": {...}, "index": {...}, "search": {...}}
    GET  /healthz -> {"status": "ok", "rows", "dim", "model", "index"}

A query's prefix z[:D_s] shortlists K candidates through the FAISS index of size D_s; the candidates are
reranked exactly with the normalised prefix z[:D_r] (D_r = d by default). Bad requests get a 4xx naming
the problem; the replica keeps serving.

`app_builder` is the import path for `serve run` / Serve config files: `mrl.serve:app_builder`.
"""


import time
from pathlib import Path
from typing import Any


def _request_models():
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field

    FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        vector: list[FiniteFloat] | None = Field(None, description="query embedding of length d (raw, any norm)")
        id: int | None = Field(None, description="id of a corpus item to use as the query")
        k: int | None = Field(None, description="results to return, in [1, corpus rows]")
        shortlist_k: int | None = Field(None, description="shortlist length K (>= k)")

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

            faiss.omp_set_num_threads(1)  # one CPU per replica
            self.cfg = cfg
            self.artifact = load_index(index_dir, device=cfg.device)
            self.rerank_size = cfg.rerank_size or self.artifact.dim
            if cfg.shortlist_size not in self.artifact.indexes:
                raise ValueError(f"serve.shortlist_size {cfg.shortlist_size} is not an indexed size "
                                 f"{sorted(self.artifact.indexes)} of {index_dir}")
            if self.rerank_size > self.artifact.dim:
                raise ValueError(f"serve.rerank_size {self.rerank_size} is above d={self.artifact.dim}")
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
                    "model": self.model_info, "index": self.index_info}

        @app.post("/search")
        def search(self, request: SearchRequest) -> dict[str, Any]:
            from mrl.search import adaptive_search

            started = time.perf_counter()
            rows, dim = len(self.artifact.ids), self.artifact.dim
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
                query = np.asarray(request.vector, dtype=np.float32)[None]  # (1, d)
                if not np.any(query[:, :self.cfg.shortlist_size]) or not np.any(query[:, :self.rerank_size]):
                    raise HTTPException(status_code=422, detail="vector is zero on the searched prefix; "
                                                                "it has no direction to search with")
            else:
                query = np.asarray(self.artifact.vectors[self._position(request.id)], dtype=np.float32)[None]
            scores, positions = adaptive_search(
                self.artifact.indexes[self.cfg.shortlist_size], self.artifact.vectors, query,
                self.cfg.shortlist_size, shortlist_k, self.rerank_size, k)
            keep = positions[0] >= 0
            pos = positions[0][keep]
            return {"ids": self.artifact.ids[pos].tolist(), "scores": scores[0][keep].tolist(),
                    "labels": self.artifact.labels[pos].tolist(), "model": self.model_info,
                    "index": self.index_info,
                    "search": {"shortlist_size": self.cfg.shortlist_size, "shortlist_k": shortlist_k,
                               "rerank_size": self.rerank_size, "k": k},
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
    print(f"[serve] adaptive retrieval at {url}/search (D_s={serve_cfg.shortlist_size}, "
          f"K={serve_cfg.shortlist_k}, D_r={serve_cfg.rerank_size or manifest['dim']})", flush=True)
    if blocking:
        print("[serve] serving until Ctrl-C", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return {"url": url, "run_id": run.info.run_id, "index_version": manifest.get("index_run_id")}
