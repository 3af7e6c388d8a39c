"""Load benchmark of the retrieval service over HTTP: a bounded load generator on 127.0.0.1 against Ray Serve.

    python benchmarks/serve_load.py [--index outputs/index/latest] [--seconds 30] [--concurrency 1 8 32]
                                    [--queries vector image] [key=value ...]
                                    (ServeConfig overrides, e.g. num_replicas=2)
    python benchmarks/serve_load.py --kill-replica [--index ...] [--seconds 30] [key=value ...]
    python benchmarks/serve_load.py --api [--index ...] [--seconds 30] [--concurrency 1 8 32] [key=value ...]

Deploys the service (serving/serve.yaml's settings) over the index on a local Ray cluster, then for each query
kind and concurrency runs that many closed-loop clients (a new request as soon as the last one answered, spread
over client processes so the generator is not one Python thread) for `--seconds`. Vector queries are the index's
embed run's test-split embeddings; image queries are that run's test-split images as base64 PNGs (encoded once,
before the load), embedded by the Encoder deployment, which needs the MLflow store beside the index
(<output_dir>/mlflow.db): without it the image levels are skipped. Reports requests, errors, requests/second and
client-side p50 / p90 / p99 latency; writes docs/results/serve_load.md, .json and serve_load.png (latency against
throughput, one line per query kind) and logs them to MLflow.

--kill-replica: a crash drill. Deploys two Retriever replicas, runs 8 closed-loop clients of vector queries for
`--seconds` and SIGKILLs one Retriever replica's process half-way through. Every request's start, completion
and success are recorded; reports failed requests (against those in flight at the kill), the longest gap
between consecutive successful answers across all clients, latency before and after the kill and when Serve
had two replicas running again. Writes docs/results/serve_kill.md and .json and logs them to MLflow.

--api: the API's figures, each beside its reference measured in the same run on the same cores. Single-query
requests against a no-op Serve app with the same ingress (FastAPI, the same middlewares, parsing the same body,
answering nothing) at each concurrency, the two alternating level by level: req/s and p99 as ratios to it.
Batches of 64 and 256 vector queries a request, as JSON floats and as one binary matrix, from 4 clients:
queries/s over HTTP against `RetrievalService.search_many` on the same batches in this process (one thread).
/v1/embeddings with 64 inputs a request (images, or texts on a text index) from 4 clients: inputs/s against the
model's in-process rate (the Encoder's call, and the embed stage's per-batch call). Writes
docs/results/serve_api.md, .json, .png (`--results-name` to keep a second index's run beside the first).

The load goes only to 127.0.0.1 and stops by itself; Serve and Ray are shut down at the end.
"""

import argparse
import base64
import http.client
import io
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
QUERY_KINDS = ("vector", "image")
KILL_CONCURRENCY, KILL_REPLICAS = 8, 2
TARGET_GAP_S = 1.0  # the crash drill's target: no answer for at most this long


# ---------------------------------------------------------------------------------------------- pure helpers


def percentiles(latencies_ms, qs=(50, 90, 99)) -> dict[str, float]:
    """{"p50_ms": ..., ...} of the latencies (any order); NaN for each when there are none."""
    lat = np.asarray(latencies_ms, dtype=float).ravel()
    return {f"p{q:g}_ms": (float(np.percentile(lat, q)) if lat.size else float("nan")) for q in qs}


def as_records(records) -> np.ndarray:
    """Per-request records (t_start, t_done, ok) as an (n, 3) float array (ok: 1.0 or 0.0)."""
    return np.asarray(records, dtype=float).reshape(-1, 3)


def longest_gap(done_ok) -> tuple[float, float, float]:
    """The longest time between consecutive successful completions, over (t_done, ok) pairs from all clients in any
    order: (gap, t_from, t_to), the gap in the pairs' unit and the two completions that bound it; (0, nan, nan)
    with fewer than two successes."""
    arr = np.asarray(done_ok, dtype=float).reshape(-1, 2)
    t = np.sort(arr[arr[:, 1] > 0, 0])
    if t.size < 2:
        return 0.0, float("nan"), float("nan")
    gaps = np.diff(t)
    i = int(np.argmax(gaps))
    return float(gaps[i]), float(t[i]), float(t[i + 1])


def count_failures(records, t_kill: float) -> dict[str, int]:
    """Failure accounting around a kill at `t_kill`, over (t_start, t_done, ok) records: all requests, those failed,
    those in flight at the kill (started before it, finished after it), the failed ones among those, and the failed
    ones started after the kill (sent to a replica already gone)."""
    r = as_records(records)
    start, done, ok = r[:, 0], r[:, 1], r[:, 2] > 0
    in_flight = (start <= t_kill) & (done > t_kill)
    return {"requests": int(len(r)), "failed": int((~ok).sum()), "in_flight_at_kill": int(in_flight.sum()),
            "failed_in_flight": int((~ok & in_flight).sum()), "failed_after_kill": int((~ok & (start > t_kill)).sum()),
            "failed_before_kill": int((~ok & (done <= t_kill)).sum())}


def latency_around(records, t_kill: float) -> dict[str, float]:
    """p50/p99 (ms) of successful requests finished before the kill and of those started after it."""
    r = as_records(records)
    ok = r[:, 2] > 0
    lat = (r[:, 1] - r[:, 0]) * 1000
    before = percentiles(lat[ok & (r[:, 1] <= t_kill)], (50, 99))
    after = percentiles(lat[ok & (r[:, 0] > t_kill)], (50, 99))
    return {**{f"before_{k}": v for k, v in before.items()}, **{f"after_{k}": v for k, v in after.items()}}


def timeline(records, t_kill: float, bin_s: float = 1.0) -> list[dict]:
    """Completions per `bin_s` window relative to the kill: [{"t_s": window start, "ok": n, "failed": n}, ...]
    over the windows from the first to the last completion."""
    r = as_records(records)
    if not len(r):
        return []
    rel = r[:, 1] - t_kill
    bins = np.floor(rel / bin_s).astype(int)
    rows = []
    for b in range(int(bins.min()), int(bins.max()) + 1):
        sel = bins == b
        rows.append({"t_s": round(b * bin_s, 3), "ok": int((sel & (r[:, 2] > 0)).sum()),
                     "failed": int((sel & (r[:, 2] <= 0)).sum())})
    return rows


def kill_verdict(failures: dict[str, int], gap_s: float, concurrency: int, max_gap_s: float = TARGET_GAP_S
                 ) -> dict[str, bool]:
    """The drill's targets: failed requests at most those in flight at the kill (so at most `concurrency`), and
    no window without a successful answer longer than `max_gap_s`."""
    bound = min(failures["in_flight_at_kill"], concurrency)
    return {"failures_ok": failures["failed"] <= bound, "gap_ok": gap_s <= max_gap_s}


def split_clients(concurrency: int, max_procs: int = 4) -> list[int]:
    """Closed-loop clients per client process: `concurrency` spread over up to `max_procs` processes."""
    procs = max(1, min(concurrency, max_procs))
    return [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]


def png_base64(image: np.ndarray) -> str:
    """One (C, H, W) uint8 image (C = 1 or 3) as a base64 PNG string."""
    from PIL import Image

    img = np.asarray(image, dtype=np.uint8)
    pil = Image.fromarray(img[0], "L") if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0), "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------- load generation


def client_process(port: int, bodies: list[bytes], threads: int, seconds: float, out: mp.Queue,
                   records: bool = False, path: str = "/search") -> None:
    """`threads` closed-loop clients for `seconds`; puts (latencies in s, errors) on `out`, or with `records` an
    (n, 3) array of per-request (t_start, t_done, ok) on time.monotonic() (CLOCK_MONOTONIC: one clock for all
    processes on the machine)."""
    results: list[list] = [[] for _ in range(threads)]
    errors = [0] * threads
    stop = time.monotonic() + seconds

    def loop(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i, mine = k, results[k]
        while time.monotonic() < stop:
            body = bodies[i % len(bodies)]
            i += threads
            t0 = time.monotonic()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            t1 = time.monotonic()
            if records:
                mine.append((t0, t1, 1.0 if ok else 0.0))
            elif ok:
                mine.append(t1 - t0)
            else:
                errors[k] += 1
        conn.close()

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if records:
        out.put(as_records([rec for part in results for rec in part]))
    else:
        out.put(([lat for part in results for lat in part], sum(errors)))


def run_clients(port: int, bodies: list[bytes], concurrency: int, seconds: float, records: bool = False,
                during=None, path: str = "/search") -> tuple[list, float, float]:
    """`concurrency` closed-loop clients over up to 4 processes for `seconds`: (each process's result, monotonic
    start, wall seconds). `during(started)` runs in this process while the load runs (the kill drill)."""
    per = split_clients(concurrency)
    queue: mp.Queue = mp.Queue()
    started = time.monotonic()
    workers = [mp.Process(target=client_process, args=(port, bodies[i::len(per)], n, seconds, queue, records, path))
               for i, n in enumerate(per)]
    try:
        for w in workers:
            w.start()
        if during is not None:
            during(started)
        parts = [queue.get(timeout=seconds + 120) for _ in workers]
        for w in workers:
            w.join()
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
                w.join()
    return parts, started, time.monotonic() - started


def run_level(port: int, bodies: list[bytes], concurrency: int, seconds: float, queries: str = "vector",
              path: str = "/search") -> dict:
    """One (query kind, concurrency) level; returns the measured row."""
    parts, _, wall = run_clients(port, bodies, concurrency, seconds, path=path)
    lat = np.concatenate([np.asarray(p[0], dtype=float) for p in parts]) * 1000
    errors = sum(p[1] for p in parts)
    return {"queries": queries, "concurrency": concurrency, "requests": int(len(lat)), "errors": int(errors),
            "seconds": round(wall, 1), "rps": len(lat) / wall, **percentiles(lat)}


# ---------------------------------------------------------------------------------------------- queries


def query_vectors(manifest: dict, n: int = 2000) -> np.ndarray:
    """`n` of the embed run's test-split embeddings, in a seeded random order: (n, d) float32."""
    from mrl.artifacts.embeddings import read_embeddings

    _, _, queries = read_embeddings(Path(manifest["embeddings"]) / "test")
    pick = np.random.default_rng(0).permutation(len(queries))[:n]
    return np.asarray(queries[pick], dtype=np.float32)


def vector_bodies(vectors: np.ndarray) -> list[bytes]:
    """One single-query POST /search body per row, k = 10."""
    return [json.dumps({"vector": [round(float(x), 6) for x in row], "k": 10}).encode() for row in vectors]


def image_bodies(manifest: dict, n: int = 2000) -> list[bytes]:
    """Base64 PNG bodies of test-split images (`split_images_base64`), k = 10."""
    return [json.dumps({"image": image, "k": 10}).encode() for image in split_images_base64(manifest, n)]


def split_images_base64(manifest: dict, n: int) -> list[str]:
    """`n` test-split images in a seeded random order as base64 PNGs, read through the embed run's data source
    and model spec."""
    from mrl.artifacts.manifest import read_manifest
    from mrl.config import DataConfig, ModelConfig
    from mrl.configio import from_dict
    from mrl.data.sources import load_split

    embed = read_manifest(manifest["embeddings"], stage="embed")
    data = DataConfig(source=embed["data"]["source"], path=embed["data"]["path"])
    model = from_dict(ModelConfig, embed["model_spec"], prefix="model.")
    images, _ = load_split(data, model, "test")
    pick = np.random.default_rng(0).permutation(len(images))[:n]
    return [png_base64(images[i]) for i in pick]


def image_unavailable(manifest: dict, cfg, tracking_uri: str | None, store: Path) -> str | None:
    """Why this service cannot answer image queries (None: it can); `store` is where the MLflow store was sought."""
    if manifest.get("modality", "image") != "image":
        return f"the index's model reads {manifest.get('modality')}, not images"
    return encoder_unavailable(manifest, cfg, tracking_uri, store)


def encoder_unavailable(manifest: dict, cfg, tracking_uri: str | None, store: Path) -> str | None:
    """Why this service has no Encoder deployment (None: it has one)."""
    if not manifest.get("model_uri"):
        return "the index manifest names no model, so there is no Encoder deployment"
    if tracking_uri is None:
        return f"no MLflow store beside the index (looked for {store}), so there is no Encoder deployment"
    if not cfg.encoder:
        return "serve.encoder is off"
    return None


# ---------------------------------------------------------------------------------------------- Ray Serve


def retriever_replicas(app_name: str = "mrl") -> list[dict]:
    """The live Retriever replica actors: [{"name", "pid", "class_name"}]. Read from the GCS actor table (the state
    API, ray.util.state.list_actors, goes through the dashboard, which this benchmark does not start); the class
    name Serve 2.60 gives them is "ServeReplica:<app>:Retriever"."""
    wanted = f"ServeReplica:{app_name}:Retriever"
    try:
        from ray._private.state import actors

        table = [{"name": a["Name"], "pid": a["Pid"], "class_name": a["ActorClassName"], "state": a["State"]}
                 for a in actors().values()]
    except (ImportError, AttributeError):  # private API moved: the public one (needs a dashboard)
        from ray.util.state import list_actors

        table = [{"name": a.name, "pid": a.pid, "class_name": a.class_name, "state": a.state}
                 for a in list_actors(filters=[("class_name", "=", wanted)], limit=1000)]
    return [a for a in table if a["class_name"] == wanted and a["state"] == "ALIVE"]


def running_replicas(app_name: str = "mrl", deployment: str = "Retriever") -> int:
    from ray import serve

    try:
        states = serve.status().applications[app_name].deployments[deployment].replica_states
    except KeyError:
        return 0
    return int(states.get("RUNNING", 0))


def start_service(index: Path, cfg, tracking_uri: str | None, port: int) -> None:
    import ray
    from ray import serve

    from mrl.service.app import build_app

    ray.init(address="local", num_cpus=4, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(str(index), cfg, tracking_uri), name="mrl", route_prefix="/", blocking=False)


def stop_service() -> None:
    import ray
    from ray import serve

    try:
        if ray.is_initialized():
            serve.shutdown()
    finally:
        ray.shutdown()


def log_to_mlflow(run_name: str, index: Path, metrics: dict[str, float], files: list[str]) -> None:
    import mlflow

    from mrl.artifacts import tracking
    from mrl.config import MlflowConfig

    tracking.setup(MlflowConfig(), str(REPO / "outputs"))
    with mlflow.start_run(run_name=run_name, tags={"mrl.stage": "benchmark", "mrl.input_uri": str(index)}):
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))})
        for name in files:
            mlflow.log_artifact(str(RESULTS / name))


# ---------------------------------------------------------------------------------------------- load mode


def plot(rows: list[dict], path: Path) -> None:
    from mrl.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    kinds = list(dict.fromkeys(r.get("queries", "vector") for r in rows))
    for n, kind in enumerate(kinds):
        mine = [r for r in rows if r.get("queries", "vector") == kind]
        color = f"C{n}"
        for key, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
            ax.plot([r["rps"] for r in mine], [r[key] for r in mine], style, color=color,
                    label=f"{kind} {key.replace('_ms', '')}")
        for r in mine:
            ax.annotate(f"c={r['concurrency']}", (r["rps"], r["p50_ms"]), fontsize=8, xytext=(4, -10),
                        textcoords="offset points")
    ax.set_xlabel("requests / second")
    ax.set_ylabel("client latency (ms)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(f"Retrieval service under load ({', '.join(kinds)} queries)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_mode(args, argv: list[str], index: Path, manifest: dict, cfg, tracking_uri: str | None, port: int) -> int:
    kinds = list(dict.fromkeys(args.queries))
    skipped = {}
    if "image" in kinds:
        why = image_unavailable(manifest, cfg, tracking_uri, index.parent.parent / "mlflow.db")
        if why:
            print(f"[serve-load] image queries skipped: {why}", flush=True)
            skipped["image"] = why
            kinds.remove("image")
    if not kinds:
        print("[serve-load] nothing to run", file=sys.stderr)
        return 2
    bodies = {}
    for kind in kinds:
        t0 = time.monotonic()
        bodies[kind] = vector_bodies(query_vectors(manifest)) if kind == "vector" else image_bodies(manifest)
        print(f"[serve-load] {len(bodies[kind])} {kind} bodies ready ({time.monotonic() - t0:.1f}s, "
              f"{np.mean([len(b) for b in bodies[kind]]):.0f} bytes each)", flush=True)

    rows = []
    start_service(index, cfg, tracking_uri, port)
    try:
        for kind in kinds:
            run_level(port, bodies[kind], 1, 3.0, kind)  # warm-up: page in the index / model, open connections
            for c in args.concurrency:
                rows.append(run_level(port, bodies[kind], c, args.seconds, kind))
                r = rows[-1]
                print(f"[serve-load] {kind} c={c}: {r['requests']} requests, {r['errors']} errors, "
                      f"{r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms", flush=True)
    finally:
        stop_service()

    skip_note = "".join(f" {kind.capitalize()} queries skipped: {why}." for kind, why in skipped.items())
    lines = ["# Retrieval service under load", "",
             f"Command: `python benchmarks/serve_load.py {' '.join(argv)}`. Date: {time.strftime('%Y-%m-%d')}. "
             f"Machine: {os.cpu_count()} CPUs. Index: {manifest['rows']:,} x {manifest['dim']} ({index.name}), "
             f"mode {cfg.mode}, {cfg.num_replicas} replica(s), batches of up to {cfg.batch_max_size} "
             f"(wait {cfg.batch_wait_ms} ms). Closed-loop clients on 127.0.0.1 (over up to 4 processes, on the "
             f"same 2 cores as the service), {' and '.join(kinds)} queries from the test split (images as base64 "
             f"PNGs embedded by the Encoder deployment), k = 10, {args.seconds:.0f} s per level; latency measured by "
             f"the clients.{skip_note}", "",
             "| queries | concurrency | requests | errors | req/s | p50 (ms) | p90 (ms) | p99 (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['queries']} | {r['concurrency']} | {r['requests']:,} | {r['errors']} | {r['rps']:,.0f} | "
              f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} |" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "serve_load.json").write_text(json.dumps(
        {"config": {"index": str(index), "seconds": args.seconds, "queries": kinds, "skipped": skipped},
         "rows": rows}, indent=1))
    plot(rows, RESULTS / "serve_load.png")
    # vector metrics keep their names of earlier runs (c8_rps); other kinds are prefixed (image_c8_rps)
    metrics = {f"{'' if r['queries'] == 'vector' else r['queries'] + '_'}c{r['concurrency']}_{key}": r[key]
               for r in rows for key in ("rps", "p50_ms", "p99_ms", "errors")}
    log_to_mlflow("serve-load", index, metrics, ["serve_load.md", "serve_load.json", "serve_load.png"])
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------------------------- api mode

BATCH_SIZES, BATCH_CLIENTS, EMBED_BATCH = (64, 256), 4, 64


def noop_app(cfg):
    """A Ray Serve app with the service's ingress and no work behind it: FastAPI with the same middlewares (Guard,
    BodyLimit), one replica of 1 CPU with the Retriever's queue settings (max_ongoing_requests,
    max_queued_requests: with Serve's default of 5 ongoing requests it fell to 16 req/s at 32 clients), a POST
    /search that parses the same body model (`SearchBody`) and answers an empty result. What it sustains is the
    framework's ceiling on this machine, measured beside the service."""
    from fastapi import FastAPI, Header
    from ray import serve

    from mrl.service import guard
    from mrl.service.api import SearchBody
    from mrl.service.app import BODY_LIMIT_ENV, BodyLimit
    from mrl.service.guard import Guard

    app = FastAPI()
    app.add_middleware(BodyLimit)
    app.add_middleware(Guard)

    @serve.deployment(name="NoOp")
    @serve.ingress(app)
    class NoOp:
        def __init__(self, limit: int):
            os.environ[BODY_LIMIT_ENV] = str(limit)
            guard.configure(None, True)

        @app.post("/search")
        async def search(self, request: SearchBody, authorization: str | None = Header(None)) -> dict:
            return {"ids": [], "scores": [], "labels": []}

    return NoOp.options(num_replicas=1, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=cfg.max_ongoing_requests,
                        max_queued_requests=cfg.max_queued_requests).bind(cfg.max_body_bytes)


def matrix_body(rows: np.ndarray) -> dict:
    """The binary form of a batch: base64 of little-endian float32 rows."""
    return {"dtype": "float32", "shape": list(rows.shape),
            "data": base64.b64encode(rows.astype("<f4").tobytes()).decode("ascii")}


def batch_bodies(vectors: np.ndarray, size: int, fmt: str, k: int = 10) -> list[bytes]:
    """POST /search bodies of `size` vector queries each, as JSON floats (`queries`) or one binary matrix."""
    out = []
    for start in range(0, len(vectors) - size + 1, size):
        rows = vectors[start:start + size]
        body = ({"vectors": matrix_body(rows), "k": k} if fmt == "binary" else
                {"queries": [{"vector": [round(float(x), 6) for x in row]} for row in rows], "k": k})
        out.append(json.dumps(body).encode())
    return out


def embedding_inputs(manifest: dict, n: int) -> list[str]:
    """`n` test-split inputs for /v1/embeddings: images as data URLs (image models), or the queries of a text
    corpus (text models), read through the embed run's data source."""
    if manifest.get("modality", "image") == "image":
        return [f"data:image/png;base64,{image}" for image in split_images_base64(manifest, n)]
    from mrl.artifacts.manifest import read_manifest
    from mrl.config import DataConfig
    from mrl.data.sources import load_text_split

    embed = read_manifest(manifest["embeddings"], stage="embed")
    data = DataConfig(source=embed["data"]["source"], path=embed["data"]["path"])
    return [str(text) for text in load_text_split(data, "test")["query"][:n]]


def embedding_bodies(inputs: list[str], size: int, model: str) -> list[bytes]:
    """POST /v1/embeddings bodies of `size` inputs each (`embedding_inputs`), full size d."""
    return [json.dumps({"model": model, "input": inputs[i:i + size]}).encode()
            for i in range(0, len(inputs) - size + 1, size)]


def rate(fn, items: list, per_item: int, seconds: float) -> float:
    """Items per second of `fn` called on `items` in turn for about `seconds` (after one warm-up call)."""
    fn(items[0])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn(items[done % len(items)])
        done += 1
    return done * per_item / (time.perf_counter() - started)


def in_process_rates(index: Path, cfg, vectors: np.ndarray, manifest: dict, inputs: list[str] | None,
                     tracking_uri: str | None, seconds: float) -> dict[str, float]:
    """What the replicas' own calls sustain in this process on one thread, measured in the same run: the
    service's search of a binary batch (RetrievalService.search_many: decode, validate, one engine run per plan)
    per batch size, and the model's embedding of batches of inputs: the Encoder deployment's call (QueryEncoder:
    image decode + forward, or tokenise + forward) and the embed stage's per-batch call (embed_images on decoded
    images, MRLModel.embed_texts on texts) on the first inputs /v1/embeddings is sent (`inputs`; None: there is
    no encoder, so only the search is measured)."""
    import faiss
    import torch

    from mrl.service.retrieval import RetrievalService

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    service = RetrievalService.from_path(str(index), cfg)
    out = {}
    for size in BATCH_SIZES:
        bodies = [{"vectors": matrix_body(vectors[i:i + size]), "k": 10} for i in range(0, len(vectors) - size + 1, size)]
        out[f"search_{size}_qps"] = rate(service.search_many, bodies, size, seconds)
    if inputs is not None:
        from mrl.data.preprocess import decode_image, embed_images
        from mrl.service.embeddings import decode_image_input
        from mrl.service.encoder import QueryEncoder

        encoder = QueryEncoder(manifest["model_uri"], tracking_uri)
        inputs = inputs[:8 * EMBED_BATCH]
        if encoder.model.modality == "image":  # what the Encoder deployment is handed: the encoded images
            inputs = [decode_image_input(item, i) for i, item in enumerate(inputs)]
        calls = [inputs[i:i + EMBED_BATCH] for i in range(0, len(inputs), EMBED_BATCH)]
        out["encoder_ips"] = rate(encoder, calls, EMBED_BATCH, seconds)
        if encoder.model.modality == "image":  # the embed stage's per-batch call on decoded images
            arrays = [np.stack([decode_image(b, encoder.image_size, encoder.in_channels) for b in call])
                      for call in calls]
            out["forward_ips"] = rate(lambda a: embed_images(encoder.model, a), arrays, EMBED_BATCH, seconds)
        else:  # the embed stage's call for texts: the model's tokenizer and forward pass
            out["forward_ips"] = rate(encoder.model.embed_texts, calls, EMBED_BATCH, seconds)
    return out


def check_bodies(port: int, path: str, body: bytes, expect: int) -> None:
    """One request of a kind before its load: 200 with `expect` answers and no failed query, or stop here."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    reply = json.loads(resp.read())
    conn.close()
    answers = len(reply.get("results", reply.get("data", [])))
    if resp.status != 200 or answers != expect or reply.get("failed", 0):
        raise RuntimeError(f"POST {path} answered {resp.status} with {answers} answers (expected {expect}): "
                           f"{str(reply)[:300]}")


def api_mode(args, argv: list[str], index: Path, manifest: dict, cfg, tracking_uri: str | None, port: int) -> int:
    """--api: the service beside a no-op Serve app of the same ingress (single queries, ratios at each
    concurrency), batched requests (queries/s over HTTP against the in-process search of the same batches) and
    /v1/embeddings (inputs/s over HTTP against the in-process encoder)."""
    from ray import serve

    from mrl.config import ServeConfig
    from mrl.configio import from_dict, to_dict

    cfg = from_dict(ServeConfig, {**to_dict(cfg), "max_body_bytes": max(cfg.max_body_bytes, 16_000_000),
                                  "max_batch_queries": max(cfg.max_batch_queries, *BATCH_SIZES),
                                  "max_embed_inputs": max(cfg.max_embed_inputs, EMBED_BATCH)}, "serve.")
    no_encoder = encoder_unavailable(manifest, cfg, tracking_uri, index.parent.parent / "mlflow.db")
    kind = "texts" if manifest.get("modality") == "text" else "images"
    vectors = query_vectors(manifest, 2048)
    singles = vector_bodies(vectors[:2000])
    batches = {(size, fmt): batch_bodies(vectors, size, fmt) for size in BATCH_SIZES for fmt in ("json", "binary")}
    inputs = embedding_inputs(manifest, 1024) if no_encoder is None else None
    embeds = embedding_bodies(inputs, EMBED_BATCH, manifest["model_uri"]) if inputs else None
    print(f"[serve-api] bodies ready; measuring the in-process rates ({args.seconds / 3:.0f} s each)", flush=True)
    local = in_process_rates(index, cfg, vectors, manifest, inputs, tracking_uri, args.seconds / 3)
    print("[serve-api] in process: " + ", ".join(f"{k} {v:,.0f}" for k, v in local.items()), flush=True)

    single_rows, batch_rows, embed_rows = [], [], []
    start_service(index, cfg, tracking_uri, port)
    try:
        serve.run(noop_app(cfg), name="noop", route_prefix="/noop", blocking=False)
        for path in ("/noop/search", "/search"):
            run_level(port, singles, 1, 3.0, "warm-up", path=path)
        for c in args.concurrency:  # the no-op app and the service alternate, level by level, on the same cores
            noop = run_level(port, singles, c, args.seconds, "no-op app", path="/noop/search")
            svc = run_level(port, singles, c, args.seconds, "service")
            single_rows.append({"concurrency": c, "noop": noop, "service": svc,
                                "rps_ratio": svc["rps"] / noop["rps"], "p99_ratio": svc["p99_ms"] / noop["p99_ms"]})
            print(f"[serve-api] single queries c={c}: service {svc['rps']:.0f} req/s (p99 {svc['p99_ms']:.1f} ms, "
                  f"{svc['errors']} errors), no-op app {noop['rps']:.0f} req/s (p99 {noop['p99_ms']:.1f} ms): "
                  f"{single_rows[-1]['rps_ratio']:.2f}x req/s, {single_rows[-1]['p99_ratio']:.2f}x p99", flush=True)
        for (size, fmt), bodies in batches.items():
            check_bodies(port, "/search", bodies[0], size)
            row = run_level(port, bodies, BATCH_CLIENTS, args.seconds, f"batch {size} {fmt}")
            row.update(size=size, format=fmt, qps=row["rps"] * size, local_qps=local[f"search_{size}_qps"])
            row["ratio"] = row["qps"] / row["local_qps"]
            batch_rows.append(row)
            print(f"[serve-api] batches of {size} ({fmt}), {BATCH_CLIENTS} clients: {row['qps']:,.0f} queries/s "
                  f"over HTTP ({row['errors']} errors) = {row['ratio']:.2f}x the in-process search", flush=True)
        if embeds:
            check_bodies(port, "/v1/embeddings", embeds[0], EMBED_BATCH)
            row = run_level(port, embeds, BATCH_CLIENTS, args.seconds, "embeddings", path="/v1/embeddings")
            row.update(size=EMBED_BATCH, kind=kind, ips=row["rps"] * EMBED_BATCH, local_ips=local["encoder_ips"],
                       forward_ips=local["forward_ips"])
            embed_rows.append(row)
            print(f"[serve-api] /v1/embeddings, {EMBED_BATCH} {kind} a request, {BATCH_CLIENTS} clients: "
                  f"{row['ips']:,.0f} {kind}/s ({row['errors']} errors); in process {row['local_ips']:,.0f} "
                  f"(the encoder), {row['forward_ips']:,.0f} (the embed stage's call)", flush=True)
    finally:
        stop_service()

    name = args.results_name
    lines = write_api_report(argv, index, manifest, cfg, args, single_rows, batch_rows, embed_rows, local,
                             no_encoder)
    metrics = {f"c{r['concurrency']}_rps_ratio": r["rps_ratio"] for r in single_rows}
    metrics.update({f"c{r['concurrency']}_p99_ratio": r["p99_ratio"] for r in single_rows})
    metrics.update({f"batch{r['size']}_{r['format']}_ratio": r["ratio"] for r in batch_rows})
    metrics.update({f"embeddings_{r['kind']}_per_s": r["ips"] for r in embed_rows})
    log_to_mlflow("serve-api", index, metrics, [f"{name}.md", f"{name}.json", f"{name}.png"])
    print("\n".join(lines))
    return 0


def write_api_report(argv, index, manifest, cfg, args, single_rows, batch_rows, embed_rows, local,
                     no_encoder) -> list:
    """docs/results/serve_api.md, .json and .png (req/s and p99 of the service and the no-op app by concurrency)."""
    lines = ["# The service against the framework's ceiling, batches and /v1/embeddings", "",
             f"Command: `python benchmarks/serve_load.py {' '.join(argv)}`. Date: {time.strftime('%Y-%m-%d')}. "
             f"Machine: {os.cpu_count()} CPUs, shared by the service, the no-op app and the load generator. Index: "
             f"{manifest['rows']:,} x {manifest['dim']} ({index.name}), mode {cfg.mode}, one Retriever replica "
             f"(1 CPU) and one Encoder replica. Closed-loop clients on 127.0.0.1, {args.seconds:.0f} s per level; "
             "the no-op app (same FastAPI ingress and middlewares, parses the same body, does nothing) and the "
             "service alternate level by level.", "",
             "## Single queries (one vector per request, JSON), service / no-op app", "",
             "| clients | no-op req/s | service req/s | req/s ratio | no-op p99 (ms) | service p99 (ms) | p99 ratio | "
             "errors |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['concurrency']} | {r['noop']['rps']:,.0f} | {r['service']['rps']:,.0f} | {r['rps_ratio']:.2f} | "
              f"{r['noop']['p99_ms']:.1f} | {r['service']['p99_ms']:.1f} | {r['p99_ratio']:.2f} | "
              f"{r['service']['errors'] + r['noop']['errors']} |" for r in single_rows]
    lines += ["", f"## Batched requests ({BATCH_CLIENTS} clients), queries/s over HTTP against the same search in "
                  "process", "", "In process: `RetrievalService.search_many` on binary batches of the same size, one "
                  "thread, in the benchmark's own process (decode, validate, one engine run per plan).", "",
              "| queries a request | body | req/s | queries/s over HTTP | in process queries/s | ratio | p99 (ms) | "
              "errors |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['size']} | {r['format']} | {r['rps']:,.1f} | {r['qps']:,.0f} | {r['local_qps']:,.0f} | "
              f"{r['ratio']:.2f} | {r['p99_ms']:.0f} | {r['errors']} |" for r in batch_rows]
    lines += ["", f"## /v1/embeddings ({EMBED_BATCH} inputs a request, {BATCH_CLIENTS} clients)", ""]
    if embed_rows:
        lines += ["In process, one thread: the Encoder deployment's call (`QueryEncoder`: image decode + forward, "
                  "or tokenise + forward) and the embed stage's per-batch call (`embed_images` on decoded images, "
                  "`MRLModel.embed_texts` on texts).", "",
                  "| inputs | per second over HTTP | in process: encoder | in process: embed stage's call | ratio to "
                  "the encoder | p99 (ms) | errors |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['kind']} | {r['ips']:,.0f} | {r['local_ips']:,.0f} | {r['forward_ips']:,.0f} | "
                  f"{r['ips'] / r['local_ips']:.2f} | {r['p99_ms']:.0f} | {r['errors']} |" for r in embed_rows]
    else:
        lines.append(f"Skipped: {no_encoder}.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.results_name
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"single": single_rows, "batches": batch_rows,
                                                      "embeddings": embed_rows, "in_process": local}, indent=1))
    plot_api(single_rows, RESULTS / f"{name}.png")
    return lines


def plot_api(rows: list[dict], path: Path) -> None:
    plot_beside(rows, {"noop": "no-op Serve app", "service": "retrieval service"},
                "single-query requests: the service beside the framework's ceiling (same run, same cores)", path)


def plot_beside(rows: list[dict], series: dict[str, str], title: str, path: Path) -> None:
    """req/s and p99 against closed-loop clients, one line per `series` key of each row ({"concurrency", key:
    {"rps", "p99_ms"}}): what was measured beside what."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    clients = [r["concurrency"] for r in rows]
    for key, label in series.items():
        left.plot(clients, [r[key]["rps"] for r in rows], marker="o", label=label)
        right.plot(clients, [r[key]["p99_ms"] for r in rows], marker="o", label=label)
    for ax, ylabel in ((left, "requests / s"), (right, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("closed-loop clients")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- kill mode


class KillDrill:
    """Runs in the driver while the clients load the service: SIGKILLs one Retriever replica half-way through,
    then watches Serve until it has its replicas running again."""

    def __init__(self, seconds: float, replicas: int):
        self.seconds, self.replicas = seconds, replicas
        self.t_kill = float("nan")
        self.victim: dict | None = None
        self.events: list[tuple[float, str]] = []  # (monotonic time, what happened)
        self.t_back: float | None = None

    def __call__(self, started: float) -> None:
        time.sleep(max(0.0, started + self.seconds / 2 - time.monotonic()))
        alive = retriever_replicas()
        if not alive:
            raise RuntimeError("no live Retriever replica to kill")
        self.victim = alive[0]
        os.kill(self.victim["pid"], signal.SIGKILL)
        self.t_kill = time.monotonic()
        self.events.append((self.t_kill, f"SIGKILL to {self.victim['name']} (pid {self.victim['pid']}); "
                                         f"{len(alive)} replica(s) were alive"))
        self.watch(until=started + self.seconds)

    def watch(self, until: float) -> None:
        """Polls Serve's replica states and the actor table (4 times a second) until `until` or until Serve runs
        `replicas` replicas again, none of them the killed one (`t_back`)."""
        last = None
        while self.t_back is None and time.monotonic() < until:
            running = running_replicas()
            alive = sorted(a["name"] for a in retriever_replicas())
            now = time.monotonic()
            if (running, alive) != last:
                self.events.append((now, f"Serve status: {running} Retriever replica(s) RUNNING; live replica "
                                         f"actors: {', '.join(alive) or 'none'}"))
                last = (running, alive)
            if running >= self.replicas and len(alive) >= self.replicas and self.victim["name"] not in alive:
                self.t_back = now
                break
            time.sleep(0.25)


def kill_mode(args, argv: list[str], index: Path, manifest: dict, cfg, tracking_uri: str | None, port: int) -> int:
    from mrl.config import ServeConfig
    from mrl.configio import from_dict, to_dict

    # two replicas, vector queries only: the Encoder deployment would only take CPU from the drill
    cfg = from_dict(ServeConfig, {**to_dict(cfg), "num_replicas": KILL_REPLICAS, "autoscaling": None,
                                  "encoder": False}, "serve.")
    bodies = vector_bodies(query_vectors(manifest))
    drill = KillDrill(args.seconds, KILL_REPLICAS)
    start_service(index, cfg, None, port)
    try:
        before = retriever_replicas()
        print(f"[serve-kill] Retriever replicas: {[(a['name'], a['pid']) for a in before]}", flush=True)
        run_clients(port, bodies, KILL_CONCURRENCY, 3.0)  # warm-up: both replicas page in the index
        parts, started, wall = run_clients(port, bodies, KILL_CONCURRENCY, args.seconds, records=True, during=drill)
        if drill.t_back is None:  # not back within the run: keep watching (no load) for up to 60 s more
            drill.watch(until=time.monotonic() + 60)
        after = retriever_replicas()
    finally:
        stop_service()

    records = np.concatenate(parts)
    t_kill = drill.t_kill
    fails = count_failures(records, t_kill)
    gap, g_from, g_to = longest_gap(records[:, 1:])
    lat = latency_around(records, t_kill)
    verdict = kill_verdict(fails, gap, KILL_CONCURRENCY)
    ok = records[:, 2] > 0
    rel = records[:, 1] - t_kill
    failed_rel = rel[~ok]
    after_ok = rel[ok & (records[:, 0] > t_kill)]
    summary = {
        **fails, "seconds": round(wall, 1), "rps": float(ok.sum() / wall), "kill_at_s": round(t_kill - started, 3),
        "victim": drill.victim, "replicas_before": before, "replicas_after": after,
        "longest_gap_s": gap, "gap_from_kill_s": g_from - t_kill, "gap_to_kill_s": g_to - t_kill,
        "last_failure_after_kill_s": float(failed_rel.max()) if failed_rel.size else None,
        "first_failure_after_kill_s": float(failed_rel.min()) if failed_rel.size else None,
        "first_success_started_after_kill_s": float(after_ok.min()) if after_ok.size else None,
        "replicas_back_after_kill_s": None if drill.t_back is None else drill.t_back - t_kill,
        **lat, **verdict, "target_gap_s": TARGET_GAP_S, "target_failures": min(fails["in_flight_at_kill"],
                                                                                KILL_CONCURRENCY)}
    events = [{"t_s": round(t - t_kill, 3), "event": e} for t, e in drill.events]
    tl = timeline(records, t_kill, 1.0)

    def fmt(x, unit="s", nd=2):
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f} {unit}"

    yes = {True: "met", False: "**missed**"}
    lines = ["# Retrieval service: one replica killed under load", "",
             f"Command: `python benchmarks/serve_load.py {' '.join(argv)}`. Date: {time.strftime('%Y-%m-%d')}. "
             f"Machine: {os.cpu_count()} CPUs. Index: {manifest['rows']:,} x {manifest['dim']} ({index.name}), mode "
             f"{cfg.mode}, {KILL_REPLICAS} Retriever replicas (no Encoder), {KILL_CONCURRENCY} closed-loop clients "
             f"of vector queries (k = 10) on 127.0.0.1 for {args.seconds:.0f} s; at {summary['kill_at_s']:.1f} s one "
             f"Retriever replica's process got SIGKILL ({drill.victim['name'] if drill.victim else '?'}). Times are "
             "relative to the kill; every request's start, end and status recorded by the clients.", "",
             "| measure | value |", "|---|---:|",
             f"| requests | {fails['requests']:,} ({summary['rps']:.0f} ok/s) |",
             f"| failed requests | {fails['failed']} |",
             f"| in flight at the kill | {fails['in_flight_at_kill']} (of which failed: {fails['failed_in_flight']}) |",
             f"| failed, started after the kill | {fails['failed_after_kill']} |",
             f"| first / last failure after the kill | {fmt(summary['first_failure_after_kill_s'])} / "
             f"{fmt(summary['last_failure_after_kill_s'])} |",
             f"| longest gap between successful answers | {fmt(gap)} (from {fmt(g_from - t_kill)} to "
             f"{fmt(g_to - t_kill)}) |",
             f"| first success of a request sent after the kill | {fmt(summary['first_success_started_after_kill_s'])} |",
             f"| {KILL_REPLICAS} replicas RUNNING again (Serve status) | {fmt(summary['replicas_back_after_kill_s'])} |",
             f"| p50 / p99 before the kill | {summary['before_p50_ms']:.1f} / {summary['before_p99_ms']:.1f} ms |",
             f"| p50 / p99 after the kill | {summary['after_p50_ms']:.1f} / {summary['after_p99_ms']:.1f} ms |",
             "",
             f"Targets: failures at most the requests in flight ({summary['target_failures']}): "
             f"{yes[verdict['failures_ok']]}; longest gap at most {TARGET_GAP_S:.0f} s: {yes[verdict['gap_ok']]}.", "",
             "Serve events (the driver polls serve.status() and the GCS actor table every 0.25 s after the kill):",
             ""]
    lines += [f"- {e['t_s']:+.2f} s: {e['event']}" for e in events]
    lines += ["", "Completions per second around the kill:", "", "| t (s) | ok | failed |", "|---:|---:|---:|"]
    lines += [f"| {row['t_s']:+.0f} | {row['ok']} | {row['failed']} |" for row in tl]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_kill.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "serve_kill.json").write_text(json.dumps(
        {"config": {"index": str(index), "seconds": args.seconds, "concurrency": KILL_CONCURRENCY,
                    "replicas": KILL_REPLICAS, "queries": "vector"},
         "summary": summary, "events": events, "timeline": tl}, indent=1, default=str))
    metrics = {k: summary[k] for k in ("requests", "failed", "in_flight_at_kill", "failed_after_kill", "longest_gap_s",
                                       "gap_from_kill_s", "replicas_back_after_kill_s", "before_p50_ms",
                                       "before_p99_ms", "after_p50_ms", "after_p99_ms", "rps")}
    metrics.update({k: float(verdict[k]) for k in verdict})
    log_to_mlflow("serve-kill", index, metrics, ["serve_kill.md", "serve_kill.json"])
    print("\n".join(lines))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="outputs/index/latest")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--queries", nargs="+", choices=QUERY_KINDS, default=list(QUERY_KINDS),
                        help="query kinds to load the service with (default: both)")
    parser.add_argument("--kill-replica", action="store_true",
                        help=f"crash drill: {KILL_REPLICAS} replicas, {KILL_CONCURRENCY} clients of vector queries, "
                             "one replica SIGKILLed half-way")
    parser.add_argument("--api", action="store_true",
                        help="the service beside a no-op Serve app (single queries), batches of 64 and 256 queries "
                             "(JSON and binary) against the in-process search, and /v1/embeddings (docs/results/"
                             "serve_api.*)")
    parser.add_argument("--results-name", default="serve_api",
                        help="--api: the name of the results files under docs/results (default serve_api)")
    parser.add_argument("overrides", nargs="*", help="ServeConfig key=value overrides")
    args = parser.parse_args(argv)
    import yaml

    from mrl.artifacts.manifest import read_manifest
    from mrl.config import ServeConfig
    from mrl.configio import deep_merge, from_dict, parse_overrides, to_dict

    index = Path(args.index).resolve()
    manifest = read_manifest(index, stage="index")
    base = yaml.safe_load((REPO / "serving" / "serve.yaml").read_text())["serve"]
    port = 8000 + os.getpid() % 1000
    cfg = from_dict(ServeConfig, deep_merge(base, {**parse_overrides(args.overrides), "port": port}), "serve.")
    store = index.parent.parent / "mlflow.db"  # <output_dir>/index/<run>: the store beside it holds the model
    tracking_uri = f"sqlite:///{store}" if store.is_file() else None
    if tracking_uri is None:
        cfg = from_dict(ServeConfig, {**to_dict(cfg), "encoder": False}, "serve.")
    mode = kill_mode if args.kill_replica else api_mode if args.api else load_mode
    return mode(args, argv, index, manifest, cfg, tracking_uri, port)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
