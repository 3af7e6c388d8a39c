"""The HTTP face of `RetrievalService`: a FastAPI app served by a Ray Serve deployment.

    POST /search  `SearchRequest` (a vector, a corpus id, a base64 image or a text)
                  -> {"ids", "scores", "labels", "model", "index", "search", "vector_bytes", "took_ms", "batch"}
                  or a batch, `BatchSearchRequest` ("queries": [single requests] or "vectors": one base64
                  float32/float16 matrix) -> {"results": [{"ids", "scores", "labels", "search"} or {"index",
                  "status", "detail"}], "model", "index", "failed", "took_ms"}
    POST /v1/embeddings  OpenAI-compatible (`mrl.service.embeddings`): {"model", "input", "dimensions",
                  "encoding_format"} -> {"object": "list", "data": [{"embedding", "index", ...}], "model", "usage"},
                  the index's model's first `dimensions` coordinates (a nesting size), L2-normalised
    GET  /v1/models  the model /v1/embeddings serves (OpenAI's list shape)
    GET  /healthz -> {"status": "ok", "rows", "dim", "model", "index", "modes", "limits", "auth", "encoder",
                      "queries", "budgets", "modality", "memory"}
    GET  /docs    OpenAPI page with every request field and its limits
    GET  /items/{id}   an indexed item, read from the data the index's lineage names: a PNG for image corpora,
                       {"id", "label", "text"} for text corpora (404: not in the index; 503: data not readable here)
    GET  /calibration  the index's calibration table (recall and p50 latency of each plan budgets choose from)
    GET  /        the search page (`mrl/service/page/`: index.html, app.js and style.css under /page/; no build
                  step, no CDN, works offline): a query box for the index's modality (an image file, a text, or a
                  corpus id), the results as a grid of items, a mode selector and a budget slider over the
                  calibration table, the plan each answer ran with its calibrated figures, and the calibration
                  curve (recall vs p50 latency) with the chosen plan marked

With an API key (`serve.api_key_env` / `serve.api_key_file`) every route but /healthz answers 401 without it
(`mrl.service.guard`, before any body is read; each route also asks `RetrievalService.check_key`). The page too:
GET / answers 401 with an HTTP Basic challenge, so a browser asks for the key once (any user name, the key as
password) and then sends it with the page's files and with every call the page makes, image loads included
(fetched, then shown from blob: URLs). The page itself is static and carries no data (no index path, model or
item): all it shows comes from the JSON routes.

Image and text queries go to an Encoder deployment (model composition through a DeploymentHandle) that loads the
model version the index manifest names and refuses to start on another model, d or nesting list. All
request handling is the service's; this module adds what only HTTP has: the body-size limit (413 before
the body is read), the API key header (401), Ray Serve's dynamic batching (concurrent requests searched
together, `serve.batch_max_size` / `serve.batch_wait_ms`), replicas or autoscaling, and the mapping of
`RequestError` to HTTP statuses; it also keeps FastAPI from echoing unparsable input (NaN, infinity) back in
a 500. `app_builder` is the import path for `serve run` / Serve config files: `mrl.service.app:app_builder`.

(No `from __future__ import annotations` here: FastAPI must see the route's `SearchRequest` annotation as a
class, not a string, inside Ray Serve's ingress wrapper, or it reads the body as a missing query field.)
"""

import asyncio
import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Header, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve

from mrl import storage
from mrl.artifacts.index import is_sharded, load_index, load_shard
from mrl.artifacts.manifest import read_manifest
from mrl.artifacts.remote import artifact_location, local_copy
from mrl.configio import from_dict, to_dict
from mrl.service import guard
from mrl.service.api import BatchSearchRequest, EmbeddingsRequest, SearchBody, SearchRequest, validation_detail
from mrl.service.browse import PAGE_FILES, page_asset
from mrl.service.config import ServeConfig
from mrl.service.encoder import QueryEncoder, check_encoder
from mrl.service.guard import Guard
from mrl.service.retrieval import RequestError, RetrievalService, ShardedHits, read_api_key
from mrl.service.shards import (WORKERS_NAMESPACE, Scatter, ShardedIndex, ShardMissing, ShardService, Workers,
                                shard_app_name, worker_name)

app = FastAPI(title="MRL adaptive retrieval", version="1",
              description="Matryoshka retrieval: shortlist with a small prefix, rerank exactly with larger ones. "
                          "GET /healthz lists the modes and limits of the loaded index.")
# This replica's body limit, set from its config when it starts. It lives in the process environment: Ray Serve
# ships the FastAPI app and the deployment class to replicas by value, each with its own copy of this module's
# globals, so a module-level variable set in __init__ would not be the one the middleware reads.
BODY_LIMIT_ENV, DEFAULT_BODY_LIMIT = "MRL_SERVE_MAX_BODY_BYTES", 1_000_000
KEY_HEADER = "Bearer <API key>, when the service has one"


@app.exception_handler(RequestValidationError)
async def invalid_request(request, exc: RequestValidationError):
    # FastAPI's default handler echoes the input back, which fails (500) when it holds NaN or inf.
    detail = validation_detail(exc)
    for error in detail:  # POST /search's body is one of two models: its tag is not a field the client sent
        if error["loc"][:1] == ["body"] and error["loc"][1:2] in (["single"], ["batch"]):
            del error["loc"][1]
    if "/v1/" in request.url.path:
        return openai_error(422, "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in detail), detail)
    return JSONResponse(status_code=422, content={"detail": detail})


def openai_error(status: int, message: str, detail: Any = None) -> JSONResponse:
    """An error of the OpenAI-compatible routes: OpenAI's shape ({"error": {"message", "type", ...}}, which its
    clients put in their exceptions) beside this API's usual "detail"."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse(status_code=status, content={
        "error": {"message": message, "type": kind, "param": None, "code": None},
        "detail": message if detail is None else detail})


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for a body above serve.max_body_bytes, by its declared length before it is read, or
    as soon as the bytes received pass the limit (a body sent without a length)."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        limit = int(os.environ.get(BODY_LIMIT_ENV, DEFAULT_BODY_LIMIT))
        declared = dict(scope.get("headers", ())).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            return await _refuse(send, declared.decode(errors="replace"), limit)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            if received > limit:
                raise _TooLarge
            return message

        try:
            await self.inner(scope, counted, send)
        except _TooLarge:
            await _refuse(send, f"more than {limit}", limit)


async def _refuse(send, size: str, limit: int) -> None:
    await guard.reply(send, 413, {"detail": f"request body of {size} bytes is above the limit of {limit} bytes "
                                            "(serve.max_body_bytes)"})


app.add_middleware(BodyLimit)
app.add_middleware(Guard)  # added last, so it runs first: the key before the body limit, before any body is read


def _page_file(name: str) -> Response:
    """One of the search page's static files, or 404 naming the files there are. (Defined above the deployments:
    `serve.ingress` ships the class by value when it is decorated, with the module globals that exist then.)"""
    if name not in PAGE_FILES:
        raise HTTPException(status_code=404, detail=f"no page file {name!r}; the page's files are {sorted(PAGE_FILES)}")
    body, media_type = page_asset(name)
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})


async def answer_batch(service: RetrievalService, embed, requests: list, scatter: Scatter | None = None
                       ) -> list[dict[str, Any] | RequestError]:
    """A batch of requests answered by `service`, the batch's images or texts embedded with one awaited
    `embed(queries)` call (the Encoder deployment's handle, answering (embeddings, tokens)). An encoder that fails
    answers 503 to the requests that needed it, and the batch's other requests are answered as usual. With
    `scatter` (a sharded index) the rows of id queries are fetched from their shards, and each plan is searched on
    every shard at once and merged."""
    embedded, todo = service.pending_content(requests)
    if todo:
        try:
            vectors, _ = await embed(list(todo.values()))
            embedded.update(zip(todo, vectors))
        except Exception as exc:  # noqa: BLE001 - the encoder's fault, not the request's: 503, the rest go on
            detail = f"the encoder could not embed this query ({type(exc).__name__}); retry later"
            embedded.update({i: RequestError(503, detail) for i in todo})
    if scatter is None:  # the search runs in a worker thread, so the replica keeps queueing the next batch meanwhile
        return await asyncio.to_thread(service.search_batch, requests, embedded)
    started = time.perf_counter()
    ids = service.id_queries(requests)
    rows = await asyncio.gather(*(fetch_row(service, scatter, item_id) for item_id in ids.values()))
    embedded.update({i: vector for i, (vector, _) in zip(ids, rows)})
    batch = await asyncio.to_thread(service.plan_batch, requests, embedded)
    plans = list(batch.groups)
    found = await asyncio.gather(*(scatter.hits(plan, np.concatenate([q for _, q in batch.groups[plan]]),
                                                service.shards["rule"]) for plan in plans))
    return service.reply_batch(batch, {plan: ShardedHits(*f) for plan, f in zip(plans, found)}, started)


async def fetch_row(service: RetrievalService, scatter: Scatter, item_id: int
                    ) -> tuple[np.ndarray | RequestError, int | None]:
    """(the vector of corpus id `item_id`, its label) from the shard that holds it; (404 or 503, None) when it is
    not in the index or its shard does not answer."""
    if not -2**63 <= item_id < 2**63:
        return RequestError(404, f"id {item_id} is not in the corpus ({service.rows} items)"), None
    shard = service.artifact.owner(item_id)
    try:
        vector, label = await scatter.ask(shard, "row", item_id)
    except ShardMissing as exc:
        return RequestError(503, f"id {item_id} is held by shard {shard}, which did not answer ({exc.reason}); "
                                 "retry later"), None
    if vector is None:
        return RequestError(404, f"id {item_id} is not in the corpus ({service.rows} items)"), None
    return vector, label


# BLAS, OpenMP and Numba pools of one thread: a replica searches on one CPU (more threads, on a machine shared with
# other replicas, spin and wait on each other)
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                  "NUMBA_NUM_THREADS": "1"}


def one_thread() -> None:
    """Search on one thread in this process: FAISS, PyTorch and the rerank kernels."""
    import faiss
    import torch

    from mrl.retrieval import kernels  # lazy: imports Numba, which only search processes need

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    kernels.set_threads(1)


class ShardWorker:
    """The searches of one shard replica: a plain Ray actor its `Shard` replica starts on its own node and owns
    (it dies with the replica), called by the Retrievers directly (`mrl.service.shards.Scatter`). Every answer
    carries the shard's index version."""

    def __init__(self, index_dir: str, shard: int, device: str):
        one_thread()
        self.service = ShardService(load_shard(local_copy(index_dir, shards=[shard]), shard, device=device))

    def search(self, plan, queries):
        return self.service.search(plan, queries)

    def row(self, item_id: int):
        return self.service.row(item_id)

    def health(self):
        return self.service.version, self.service.health()

    def version(self) -> str:
        return self.service.version


@serve.deployment(name="Shard", health_check_period_s=5)
class Shard:
    """One replica of one shard of a sharded index, as Serve places, health-checks and restarts it: it starts the
    shard's `ShardWorker` on its node (the replica's CPUs and GPUs are the worker's) and registers it by name for
    the Retrievers; a worker that stops answering fails the replica's health check, and Serve replaces both."""

    def __init__(self, index_dir: str, shard: int, device: str, app_name: str):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        replica = serve.get_replica_context().replica_id.unique_id
        env = dict(ONE_THREAD_ENV)  # an actor of 0 CPUs gets no thread limit from Ray
        gpus = ray.get_gpu_ids()
        if gpus:  # the replica's GPUs (serve.gpus_per_replica) are its worker's (not run here: no GPU machine has Ray)
            env.update(CUDA_VISIBLE_DEVICES=",".join(map(str, gpus)), RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES="1")
        self.worker = ray.remote(ShardWorker).options(
            name=worker_name(app_name, replica), namespace=WORKERS_NAMESPACE, num_cpus=0, max_restarts=0,
            runtime_env={"env_vars": env},
            scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        ).remote(index_dir, shard, device)
        self.version = ray.get(self.worker.version.remote())  # the shard loaded (its checks passed) before serving

    async def check_health(self) -> None:
        if await asyncio.wait_for(_awaited(self.worker.version.remote()), 10.0) != self.version:
            raise RuntimeError("the shard worker answers for another index version")


async def _awaited(ref):
    return await ref


@serve.deployment(name="Encoder", health_check_period_s=10)
class Encoder:
    """The index's model, embedding query images or texts (model composition: the Retriever holds a handle to it)."""

    def __init__(self, model_uri: str, tracking_uri: str | None, manifest: dict[str, Any], batch_max_size: int,
                 batch_wait_ms: float, max_pixels: int, formats: tuple[str, ...]):
        self.encoder = QueryEncoder(model_uri, tracking_uri, max_pixels=max_pixels, formats=tuple(formats))
        check_encoder(manifest, self.encoder.describe())  # another model, d or nesting list: the deploy fails
        self.embed.set_max_batch_size(batch_max_size)
        self.embed.set_batch_wait_timeout_s(batch_wait_ms / 1000)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def embed(self, calls: list[list[bytes | str | tuple[int, ...]]]) -> list[tuple[list, list[int]]]:
        """Dynamic batching across Retriever replicas: the query lists of concurrent calls go through the model
        in one forward pass, and each call gets its own slice back: (embeddings or reasons, tokens read)."""
        flat = [query for call in calls for query in call]
        vectors, tokens = await asyncio.to_thread(self.encoder.embed, flat)
        out, start = [], 0
        for call in calls:
            end = start + len(call)
            out.append((vectors[start:end], tokens[start:end]))
            start = end
        return out


@serve.deployment(name="Retriever", health_check_period_s=10)
@serve.ingress(app)
class Retriever:
    """One replica: a `RetrievalService` over the index directory, on one CPU thread; image and text queries go through
    the Encoder deployment when there is one."""

    def __init__(self, index_dir: str, serve_cfg: dict[str, Any], encoder=None, shard_apps: list[str] | None = None):
        one_thread()
        cfg = from_dict(ServeConfig, serve_cfg, prefix="serve.")
        self.encoder = encoder
        self.scatter = None
        if shard_apps:  # a sharded index: the top-level manifest here, the rows in the shards' applications
            artifact = ShardedIndex.open(local_copy(index_dir, shards=()))
            self.scatter = Scatter(Workers(shard_apps), artifact.version, cfg.shard_timeout_s)
        else:
            artifact = load_index(local_copy(index_dir), device=cfg.device)
        manifest = artifact.manifest
        # the Encoder deployment checked its model against this manifest when it started (a mismatch fails the
        # deploy); a handle cannot be awaited in a constructor, so its facts are the manifest's
        info = None if encoder is None else {"model_uri": manifest.get("model_uri"), "dim": manifest["dim"],
                                              "sizes": manifest["sizes"],
                                              "modality": manifest.get("modality", "image")}
        self.service = RetrievalService(artifact, cfg, encoder_info=info, location=index_dir)
        os.environ[BODY_LIMIT_ENV] = str(cfg.max_body_bytes)
        guard.configure(read_api_key(cfg), cfg.docs)
        self._batched.set_max_batch_size(cfg.batch_max_size)
        self._batched.set_batch_wait_timeout_s(cfg.batch_wait_ms / 1000)

    @app.get("/healthz")
    async def healthz(self, authorization: str | None = Header(None, description=KEY_HEADER)) -> dict[str, Any]:
        # open to probes; with a key, only the key's holders learn the model, the index and the limits
        if not guard.authorized(authorization):
            return {"status": "ok"}
        health = self.service.health()
        if self.scatter is not None:  # each shard's version, rows and memory, or why it did not answer
            health["shards"] = await self.scatter.health()
            live = sum("status" not in shard for shard in health["shards"])
            health["status"] = "ok" if live == len(health["shards"]) else "degraded"
        return health

    @app.post("/search")
    async def search(self, request: SearchBody,
                     authorization: str | None = Header(None, description=KEY_HEADER)) -> dict[str, Any]:
        self._authorize(authorization)
        if isinstance(request, BatchSearchRequest):
            return await self._search_many(request)
        reply = await self._batched(request)
        if isinstance(reply, RequestError):
            raise HTTPException(status_code=reply.status, detail=reply.detail)
        return reply

    @app.post("/v1/embeddings")
    async def embeddings(self, request: EmbeddingsRequest,
                         authorization: str | None = Header(None, description=KEY_HEADER)) -> Any:
        """OpenAI-compatible embeddings: the index's model, the first `dimensions` coordinates, L2-normalised."""
        self._authorize(authorization)
        try:
            inputs, size = self.service.embedding_inputs(request)
            try:
                vectors, tokens = await self._embed(inputs)
            except Exception as exc:  # noqa: BLE001 - the encoder's fault, not the request's
                raise RequestError(503, f"the encoder could not embed these inputs ({type(exc).__name__}); "
                                        "retry later") from None
            return self.service.embeddings_reply(request, vectors, size, tokens)
        except RequestError as exc:
            return openai_error(exc.status, str(exc.detail), exc.detail)

    @app.get("/v1/models")
    def models(self, authorization: str | None = Header(None, description=KEY_HEADER)) -> dict[str, Any]:
        self._authorize(authorization)
        return self.service.models()

    @app.get("/items/{item_id}", responses={200: {"content": {"image/png": {}},
                                                  "description": "a PNG (image corpora) or {id, label, text}"}})
    async def item(self, item_id: int, authorization: str | None = Header(None, description=KEY_HEADER)):
        self._authorize(authorization)
        try:
            label = None
            if self.scatter is not None:
                row, label = await fetch_row(self.service, self.scatter, item_id)
                if isinstance(row, RequestError):
                    raise row
            item = await asyncio.to_thread(self.service.item, item_id, label)
        except RequestError as exc:
            raise HTTPException(status_code=exc.status, detail=exc.detail) from None
        if "png" in item:
            return Response(item["png"], media_type="image/png",
                            headers={"X-Item-Id": str(item["id"]), "X-Item-Label": str(item["label"])})
        return item

    @app.get("/calibration")
    def calibration(self, authorization: str | None = Header(None, description=KEY_HEADER)) -> dict[str, Any]:
        self._authorize(authorization)
        try:
            return self.service.calibration()
        except RequestError as exc:
            raise HTTPException(status_code=exc.status, detail=exc.detail) from None

    @app.get("/", include_in_schema=False)
    def page(self) -> Response:
        return _page_file("index.html")

    @app.get("/page/{name}", include_in_schema=False)
    def page_file(self, name: str) -> Response:
        return _page_file(name)

    def _authorize(self, authorization: str | None) -> None:
        try:
            self.service.check_key(authorization)
        except RequestError as exc:
            raise HTTPException(status_code=exc.status, detail=exc.detail,
                                headers={"WWW-Authenticate": "Bearer"}) from None

    @property
    def _embed(self):
        """The Encoder deployment's embed call (awaitable), or None without an encoder."""
        return self.encoder.embed.remote if self.encoder else None

    async def _search_many(self, request: BatchSearchRequest) -> dict[str, Any]:
        """A batch request: already a batch, so it bypasses dynamic batching and runs as one `answer_batch`
        (its images or texts in one encoder call, then one engine run per plan)."""
        started = time.perf_counter()
        try:
            singles = await asyncio.to_thread(self.service.batch_requests, request)
        except RequestError as exc:
            raise HTTPException(status_code=exc.status, detail=exc.detail) from None
        replies = await answer_batch(self.service, self._embed, singles, self.scatter)
        return self.service.batch_reply(replies, started)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _batched(self, requests: list[SearchRequest]) -> list[dict[str, Any] | RequestError]:
        return await answer_batch(self.service, self._embed, requests, self.scatter)

    def check_health(self) -> None:
        self.service.check()


def build_app(index_dir: str, serve_cfg, tracking_uri: str | None = None, shard_apps: list[str] | None = None):
    """The bound Serve application for an index directory and a `ServeConfig` (replicas or autoscaling, queue
    depth and GPUs from it). With `serve.encoder` and an index whose manifest names its model, an Encoder
    deployment loads exactly that model version from `tracking_uri` for image or text queries. A sharded index's
    Retriever calls the Shard deployments of `shard_apps` (`deploy` starts them first)."""

    index_dir = artifact_location(index_dir)  # a `latest` in object storage followed
    manifest = read_manifest(index_dir, stage="index")
    if is_sharded(manifest) and not shard_apps:
        raise ValueError(f"index {index_dir} is sharded: deploy it with mrl.service.app.deploy (python "
                         "serving/app.py), which starts one Shard application per shard before the Retriever")
    encoder = None
    if serve_cfg.encoder and manifest.get("model_uri"):
        if not tracking_uri:
            raise ValueError(f"serve.encoder loads the index's model {manifest['model_uri']!r} from MLflow: give the "
                             "store's tracking URI (tracking_uri, or MLFLOW_TRACKING_URI), or set serve.encoder "
                             "to false to serve vector and id queries only")
        encoder = Encoder.options(ray_actor_options={"num_cpus": 1}, max_queued_requests=serve_cfg.max_queued_requests
                                  ).bind(manifest["model_uri"], tracking_uri, manifest,
                                         serve_cfg.encoder_batch_max_size, serve_cfg.batch_wait_ms,
                                         serve_cfg.max_image_pixels, serve_cfg.image_formats)
    scaling = ({"autoscaling_config": dict(serve_cfg.autoscaling)} if serve_cfg.autoscaling is not None
               else {"num_replicas": serve_cfg.num_replicas})
    if serve_cfg.max_replicas_per_node is not None:
        scaling["max_replicas_per_node"] = serve_cfg.max_replicas_per_node
    return Retriever.options(**scaling, max_ongoing_requests=serve_cfg.max_ongoing_requests,
                             max_queued_requests=serve_cfg.max_queued_requests,
                             ray_actor_options={"num_cpus": 1, "num_gpus": serve_cfg.gpus_per_replica}
                             ).bind(index_dir, to_dict(serve_cfg), encoder, shard_apps)


def build_shard_app(index_dir: str, shard: int, serve_cfg, app_name: str):
    """The bound Serve application `app_name` of one shard of a sharded index (`serve.shard_*` replicas and
    placement)."""
    options: dict[str, Any] = {"num_replicas": serve_cfg.shard_replicas,
                               "max_ongoing_requests": serve_cfg.max_ongoing_requests,
                               "ray_actor_options": {"num_cpus": serve_cfg.shard_cpus,
                                                     "num_gpus": serve_cfg.gpus_per_replica}}
    if serve_cfg.shard_max_replicas_per_node is not None:
        options["max_replicas_per_node"] = serve_cfg.shard_max_replicas_per_node
    return Shard.options(**options).bind(artifact_location(index_dir), shard, serve_cfg.device, app_name)


def deploy(index_dir: str, serve_cfg, name: str = "mrl", tracking_uri: str | None = None,
           route_prefix: str = "/", settle_s: float = 120.0) -> list[str]:
    """Deploy (or hot-swap to) the index at `index_dir` as Serve application `name`; returns the applications.

    A whole index is one application. A sharded one is first one application per shard, named after the index
    version (`shard_app_name`), each waited for; then the Retriever application is updated to call them (Serve
    replaces its replicas one by one, the old ones still calling the old version's shards). Once no old Retriever
    replica is left, the shard applications of other versions under `name` (a sharded index served before) are
    deleted. No reply mixes versions.
    """
    from ray import serve

    index_dir = artifact_location(index_dir)  # a `latest` in object storage followed
    manifest = read_manifest(index_dir, stage="index")
    shard_apps = []
    if is_sharded(manifest):
        version = str(manifest.get("index_run_id", storage.name(index_dir)))
        shard_apps = [shard_app_name(name, version, i) for i in range(len(manifest["shards"]["list"]))]
        for i, app_name in enumerate(shard_apps):
            serve.run(build_shard_app(index_dir, i, serve_cfg, app_name), name=app_name, route_prefix=None,
                      blocking=False)
    serve.run(build_app(index_dir, serve_cfg, tracking_uri, shard_apps or None), name=name,
              route_prefix=route_prefix, blocking=False)
    stale = [app for app in serve.status().applications if app.startswith(f"{name}-") and "-shard" in app
             and app not in shard_apps]  # shards of the versions served before
    if stale:
        _wait_for_one_generation(name, settle_s)
        for app in stale:
            serve.delete(app)
    return [name, *shard_apps]


def _wait_for_one_generation(name: str, timeout_s: float) -> None:
    """Wait until application `name`'s Retriever runs only its new replicas (the old ones stopped)."""
    from ray import serve

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        states = serve.status().applications[name].deployments["Retriever"].replica_states
        if set(states) == {"RUNNING"}:
            return
        time.sleep(0.2)
    raise TimeoutError(f"application {name!r}: old Retriever replicas still present after {timeout_s:.0f}s "
                       f"({states}); the previous version's shard applications are kept")


def app_builder(args: dict[str, Any]):
    """Serve application builder: args = {"index_dir": path, **ServeConfig fields} (a whole index; a sharded one
    is deployed by `deploy`)."""

    args = dict(args)
    index_dir = args.pop("index_dir", "outputs/index/latest")
    tracking_uri = args.pop("tracking_uri", os.environ.get("MLFLOW_TRACKING_URI"))
    return build_app(index_dir, from_dict(ServeConfig, args, prefix="serve."), tracking_uri)
