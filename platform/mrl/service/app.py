"""The HTTP face of `RetrievalService`: a FastAPI app served by a Ray Serve deployment.

    POST /search  `SearchRequest` -> {"ids", "scores", "labels", "model", "index", "search", "took_ms"}
    GET  /healthz -> {"status": "ok", "rows", "dim", "model", "index", "modes"}

All request handling is the service's; this module maps its `RequestError` to HTTP statuses and keeps
FastAPI from echoing unparsable input (NaN, infinity) back in a 500. `app_builder` is the import path for
`serve run` / Serve config files: `mrl.service.app:app_builder`.

(No `from __future__ import annotations` here: FastAPI must see the route's `SearchRequest` annotation as a
class, not a string, inside Ray Serve's ingress wrapper, or it reads the body as a missing query field.)
"""


from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from mrl.service.api import SearchRequest, validation_detail
from mrl.service.retrieval import RequestError

app = FastAPI(title="MRL adaptive retrieval", version="1")


@app.exception_handler(RequestValidationError)
async def invalid_request(request, exc: RequestValidationError):
    # FastAPI's default handler echoes the input back, which fails (500) when it holds NaN or inf.
    return JSONResponse(status_code=422, content={"detail": validation_detail(exc)})


@serve.deployment(name="Retriever", max_ongoing_requests=16, health_check_period_s=10)
@serve.ingress(app)
class Retriever:
    """One replica: a `RetrievalService` over the index directory, on one CPU thread."""

    def __init__(self, index_dir: str, serve_cfg: dict[str, Any]):
        import faiss
        import torch

        from mrl.config import ServeConfig
        from mrl.configio import from_dict
        from mrl.service.retrieval import RetrievalService

        faiss.omp_set_num_threads(1)  # one CPU per replica
        torch.set_num_threads(1)
        self.service = RetrievalService.from_path(index_dir, from_dict(ServeConfig, serve_cfg, prefix="serve."))

    @app.get("/healthz")
    def healthz(self) -> dict[str, Any]:
        return self.service.health()

    @app.post("/search")
    def search(self, request: SearchRequest) -> dict[str, Any]:
        try:
            return self.service.search(request)
        except RequestError as exc:
            raise HTTPException(status_code=exc.status, detail=exc.detail) from None

    def check_health(self) -> None:
        self.service.check()


def build_app(index_dir: str, serve_cfg):
    """The bound Serve application for an index directory and a `ServeConfig` (replicas, GPUs from it)."""
    from mrl.configio import to_dict

    return Retriever.options(num_replicas=serve_cfg.num_replicas,
                             ray_actor_options={"num_cpus": 1, "num_gpus": serve_cfg.gpus_per_replica}
                             ).bind(str(Path(index_dir).resolve()), to_dict(serve_cfg))


def app_builder(args: dict[str, Any]):
    """Serve application builder: args = {"index_dir": path, **ServeConfig fields}."""
    from mrl.config import ServeConfig
    from mrl.configio import from_dict

    args = dict(args)
    index_dir = args.pop("index_dir", "outputs/index/latest")
    return build_app(index_dir, from_dict(ServeConfig, args, prefix="serve."))
