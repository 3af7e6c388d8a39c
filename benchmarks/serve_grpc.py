"""Does Ray Serve's gRPC proxy raise the single-query ceiling here? A no-op gRPC app beside the no-op HTTP app.

    python benchmarks/serve_grpc.py [--seconds 15] [--rounds 2] [--concurrency 1 8 32]

Issue 29 asks for a gRPC ingress (Search and Embed from the same deployments) only if it measurably raises the
single-query ceiling on this machine. This measures that ceiling for both protocols with nothing behind them,
in the same run on the same cores: serve_load.py's no-op HTTP app (FastAPI with the service's middlewares,
parsing the same JSON body, one 1-CPU replica) and a no-op gRPC deployment (`mrlbench.grpc_noop`: a protobuf
SearchRequest of 512 floats and k, an empty SearchReply; one 1-CPU replica with the same queue settings) behind
Serve's gRPC proxy. Closed-loop clients on 127.0.0.1 over up to 4 processes (HTTP: http.client threads; gRPC:
grpc.aio callers on one channel per process), the two protocols alternating level by level for `--rounds`
rounds. Reports req/s, p99 and the CPU seconds per request of the proxy and of the replica (from /proc, Linux),
the medians over rounds, and gRPC / HTTP ratios. Writes docs/results/serve_grpc.md, .json and .png and logs
them to MLflow. The query vectors are random (a no-op does not read them).
"""

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

import serve_load
from mrlbench import grpc_noop

RESULTS = serve_load.RESULTS


def process_cpu_seconds(tags: tuple[str, ...]) -> dict[str, float]:
    """User + system CPU seconds so far of the processes whose command line holds each tag (Ray names actor
    processes after their class: ProxyActor, ServeReplica:<app>:<deployment>)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = dict.fromkeys(tags, 0.0)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for tag in tags:
            if tag in cmdline:
                out[tag] += (int(fields[11]) + int(fields[12])) / tick
                break
    return out


def grpc_level(port: int, app: str, vectors: list, concurrency: int, seconds: float) -> dict:
    per = serve_load.split_clients(concurrency)
    with mp.get_context("spawn").Pool(len(per)) as pool:
        parts = pool.starmap(grpc_noop.client_process,
                             [(port, app, vectors[i::len(per)], n, seconds) for i, n in enumerate(per)])
    lat = np.concatenate([np.asarray(p[0], dtype=float) for p in parts]) * 1000
    return {"requests": int(len(lat)), "errors": int(sum(p[1] for p in parts)), "rps": len(lat) / seconds,
            **serve_load.percentiles(lat)}


def measured(level, tags: tuple[str, str]) -> dict:
    """Run `level()` and add the proxy's and the replica's CPU milliseconds per request."""
    before = process_cpu_seconds(tags)
    row = level()
    after = process_cpu_seconds(tags)
    n = max(1, row["requests"])
    row["proxy_cpu_ms"], row["replica_cpu_ms"] = (1000 * (after[t] - before[t]) / n for t in tags)
    return row


def median_row(rows: list[dict]) -> dict:
    keys = ("rps", "p50_ms", "p99_ms", "proxy_cpu_ms", "replica_cpu_ms")
    return {k: float(np.median([r[k] for r in rows])) for k in keys} | {"errors": sum(r["errors"] for r in rows)}


def report(argv, args, levels: list[dict]) -> list[str]:
    lines = ["# Ray Serve's gRPC proxy against its HTTP proxy, both with nothing behind them", "",
             f"Command: `python benchmarks/serve_grpc.py {' '.join(argv)}`. Date: {time.strftime('%Y-%m-%d')}. "
             f"Machine: {os.cpu_count()} CPUs, shared by Ray, both apps and the load generator. One replica of 1 CPU "
             f"each, closed-loop clients on 127.0.0.1, {args.seconds:.0f} s per level, the protocols alternating "
             f"level by level, {args.rounds} rounds; medians over the rounds. CPU is milliseconds per request of "
             "the proxy process and of the app's replica process.", "",
             "| clients | HTTP req/s | gRPC req/s | gRPC / HTTP | HTTP p99 (ms) | gRPC p99 (ms) | p99 ratio | "
             "proxy CPU HTTP / gRPC | replica CPU HTTP / gRPC | errors |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in levels:
        h, g = r["http"], r["grpc"]
        lines.append(f"| {r['concurrency']} | {h['rps']:.0f} | {g['rps']:.0f} | {r['rps_ratio']:.2f} | "
                     f"{h['p99_ms']:.1f} | {g['p99_ms']:.1f} | {r['p99_ratio']:.2f} | "
                     f"{h['proxy_cpu_ms']:.2f} / {g['proxy_cpu_ms']:.2f} | "
                     f"{h['replica_cpu_ms']:.2f} / {g['replica_cpu_ms']:.2f} | {h['errors'] + g['errors']} |")
    ratios = ", ".join(f"{r['rps_ratio']:.2f}x at {r['concurrency']}" for r in levels)
    lines += ["", f"gRPC / HTTP req/s: {ratios}. Per round: " + "; ".join(
        f"{r['concurrency']} clients " + " ".join(f"{x:.2f}" for x in r["round_ratios"]) for r in levels) + "."]
    return lines


def plot(levels: list[dict], path: Path) -> None:
    serve_load.plot_beside(levels, {"http": "HTTP proxy (FastAPI, JSON)", "grpc": "gRPC proxy (protobuf)"},
                           "Ray Serve's ceiling for single-query requests, no work behind either proxy (same run, "
                           "same cores)", path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args(argv)
    import ray
    from ray import serve

    from mrl.config import ServeConfig

    cfg = ServeConfig()
    http_port = 8000 + os.getpid() % 1000
    grpc_port = http_port + 1000
    vectors = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    bodies = serve_load.vector_bodies(vectors)
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    levels = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port},
                    grpc_options={"port": grpc_port, "grpc_servicer_functions": [grpc_noop.SERVICER]})
        serve.run(serve_load.noop_app(cfg), name="noop", route_prefix="/noop", blocking=False)
        serve.run(grpc_noop.noop_deployment(cfg.max_ongoing_requests, cfg.max_queued_requests), name="grpc-noop",
                  route_prefix="/grpc-noop", blocking=False)
        as_lists = vectors.tolist()
        serve_load.run_level(http_port, bodies, 1, 3.0, "warm-up", path="/noop/search")
        grpc_level(grpc_port, "grpc-noop", as_lists, 1, 3.0)
        for c in args.concurrency:
            rounds = []
            for _ in range(args.rounds):
                http = measured(lambda: serve_load.run_level(http_port, bodies, c, args.seconds, "http",
                                                             path="/noop/search"), ("ProxyActor", "NoOp"))
                grpc = measured(lambda: grpc_level(grpc_port, "grpc-noop", as_lists, c, args.seconds),
                                ("ProxyActor", "GrpcNoOp"))
                rounds.append((http, grpc))
                print(f"[serve-grpc] {c} clients: HTTP {http['rps']:.0f} req/s (p99 {http['p99_ms']:.1f} ms), gRPC "
                      f"{grpc['rps']:.0f} req/s (p99 {grpc['p99_ms']:.1f} ms, {grpc['errors']} errors): "
                      f"{grpc['rps'] / http['rps']:.2f}x", flush=True)
            http, grpc = median_row([h for h, _ in rounds]), median_row([g for _, g in rounds])
            levels.append({"concurrency": c, "http": http, "grpc": grpc, "rps_ratio": grpc["rps"] / http["rps"],
                           "p99_ratio": grpc["p99_ms"] / http["p99_ms"],
                           "round_ratios": [g["rps"] / h["rps"] for h, g in rounds]})
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = report(argv, args, levels)
    (RESULTS / "serve_grpc.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "serve_grpc.json").write_text(json.dumps({"levels": levels, "seconds": args.seconds,
                                                         "rounds": args.rounds}, indent=2) + "\n")
    plot(levels, RESULTS / "serve_grpc.png")
    print("\n".join(lines))
    metrics = {f"grpc_over_http_rps_c{r['concurrency']}": r["rps_ratio"] for r in levels}
    serve_load.log_to_mlflow("serve-grpc", Path("no index: no-op apps"), metrics,
                             ["serve_grpc.md", "serve_grpc.json", "serve_grpc.png"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
