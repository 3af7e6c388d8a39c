"""Load benchmark of the retrieval service over HTTP: a bounded load generator on 127.0.0.1 against Ray Serve.

    python benchmarks/serve_load.py [--index outputs/index/latest] [--seconds 30] [--concurrency 1 8 32]
                                    [key=value ...]     (ServeConfig overrides, e.g. num_replicas=2)

Deploys the service (serving/serve.yaml's settings) over the index on a local Ray cluster, then for each
concurrency runs that many closed-loop clients (a new request as soon as the last one answered, spread over
client processes so the generator is not one Python thread) for `--seconds`, with vector queries taken from
the index's embed run's test split. Reports requests, errors, requests/second and client-side p50 / p90 /
p99 latency; writes docs/results/serve_load.md, .json and serve_load.png (latency against throughput) and
logs them to MLflow. The load goes only to 127.0.0.1 and stops by itself.
"""

import argparse
import http.client
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"


def client_process(port: int, bodies: list[bytes], threads: int, seconds: float, out: mp.Queue) -> None:
    """`threads` closed-loop clients for `seconds`; puts (latencies in s, errors) on `out`."""
    latencies, errors, lock = [], [0], threading.Lock()
    stop = time.perf_counter() + seconds

    def loop(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = offset
        mine = []
        while time.perf_counter() < stop:
            body = bodies[i % len(bodies)]
            i += threads
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/search", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            if ok:
                mine.append(time.perf_counter() - t0)
            else:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put((latencies, errors[0]))


def run_level(port: int, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    """One concurrency level: clients spread over up to 4 processes; returns the measured row."""
    procs = min(concurrency, 4)
    per = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    queue: mp.Queue = mp.Queue()
    started = time.perf_counter()
    workers = [mp.Process(target=client_process, args=(port, bodies[i::procs], n, seconds, queue))
               for i, n in enumerate(per)]
    for w in workers:
        w.start()
    parts = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    lat = np.sort(np.concatenate([np.asarray(p[0]) for p in parts])) * 1000
    errors = sum(p[1] for p in parts)
    pct = (lambda q: float(np.percentile(lat, q)) if len(lat) else float("nan"))
    return {"concurrency": concurrency, "requests": int(len(lat)), "errors": int(errors), "seconds": round(wall, 1),
            "rps": len(lat) / wall, "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99)}


def plot(rows: list[dict], path: Path) -> None:
    from mrl.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
        ax.plot([r["rps"] for r in rows], [r[key] for r in rows], style, label=key.replace("_ms", ""))
    for r in rows:
        ax.annotate(f"c={r['concurrency']}", (r["rps"], r["p50_ms"]), fontsize=8, xytext=(4, -10),
                    textcoords="offset points")
    ax.set_xlabel("requests / second")
    ax.set_ylabel("client latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Retrieval service under load (vector queries)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", default="outputs/index/latest")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("overrides", nargs="*", help="ServeConfig key=value overrides")
    args = parser.parse_args(argv)
    import ray
    import yaml
    from ray import serve

    from mrl.artifacts.embeddings import read_embeddings
    from mrl.artifacts.manifest import read_manifest
    from mrl.config import ServeConfig
    from mrl.configio import deep_merge, from_dict, parse_overrides, to_dict

    index = Path(args.index).resolve()
    manifest = read_manifest(index, stage="index")
    base = yaml.safe_load((REPO / "serving" / "serve.yaml").read_text())["serve"]
    port = 8000 + os.getpid() % 1000
    cfg = from_dict(ServeConfig, deep_merge(base, {**parse_overrides(args.overrides), "port": port}), "serve.")
    _, _, queries = read_embeddings(Path(manifest["embeddings"]) / "test")
    pick = np.random.default_rng(0).permutation(len(queries))[:2000]
    bodies = [json.dumps({"vector": [round(float(x), 6) for x in queries[i]], "k": 10}).encode() for i in pick]

    from mrl.service.app import build_app

    store = index.parent.parent / "mlflow.db"  # <output_dir>/index/<run>: the store beside it holds the model
    tracking_uri = f"sqlite:///{store}" if store.is_file() else None
    if tracking_uri is None:
        cfg = from_dict(ServeConfig, {**to_dict(cfg), "encoder": False}, "serve.")
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(str(index), cfg, tracking_uri), name="mrl", route_prefix="/", blocking=False)
    run_level(port, bodies, 1, 3.0)  # warm-up: page in the index, start the proxy's connections
    rows = []
    for c in args.concurrency:
        rows.append(run_level(port, bodies, c, args.seconds))
        r = rows[-1]
        print(f"[serve-load] c={c}: {r['requests']} requests, {r['errors']} errors, {r['rps']:.0f} req/s, "
              f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms", flush=True)
    serve.shutdown()
    ray.shutdown()

    lines = ["# Retrieval service under load", "",
             f"Command: `python benchmarks/serve_load.py {' '.join(argv)}`. Date: {time.strftime('%Y-%m-%d')}. "
             f"Machine: {os.cpu_count()} CPUs. Index: {manifest['rows']:,} x {manifest['dim']} ({index.name}), "
             f"mode {cfg.mode}, {cfg.num_replicas} replica(s), batches of up to {cfg.batch_max_size} "
             f"(wait {cfg.batch_wait_ms} ms). Closed-loop clients on 127.0.0.1 (over up to 4 processes, on the "
             f"same 2 cores as the service), vector queries from the test split, k = 10, {args.seconds:.0f} s per "
             "level; latency measured by the clients.", "",
             "| concurrency | requests | errors | req/s | p50 (ms) | p90 (ms) | p99 (ms) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['concurrency']} | {r['requests']:,} | {r['errors']} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | "
              f"{r['p90_ms']:.1f} | {r['p99_ms']:.1f} |" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "serve_load.json").write_text(json.dumps({"config": {"index": str(index), "seconds": args.seconds},
                                                         "rows": rows}, indent=1))
    plot(rows, RESULTS / "serve_load.png")
    import mlflow

    from mrl.artifacts import tracking
    from mrl.config import MlflowConfig

    tracking.setup(MlflowConfig(), str(REPO / "outputs"))
    with mlflow.start_run(run_name="serve-load", tags={"mrl.stage": "benchmark", "mrl.input_uri": str(index)}):
        for r in rows:
            mlflow.log_metrics({f"c{r['concurrency']}_{key}": r[key] for key in ("rps", "p50_ms", "p99_ms", "errors")})
        for name in ("serve_load.md", "serve_load.json", "serve_load.png"):
            mlflow.log_artifact(str(RESULTS / name))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
