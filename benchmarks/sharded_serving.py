"""Sharded serving on one machine: the same index whole and as 2 and 4 shards behind Ray Serve, side by side in one
run; the scatter-gather's cost, the memory each shard process holds, and a capacity plan for 1 billion rows.

    python benchmarks/sharded_serving.py [--config benchmarks/sharded_serving.yaml] [key=value ...]

For each corpus (the first N rows of the 1M x 2048 embeddings of docs/results/retrieval_scale.md: 60,000 and
1,000,000) each layout is built once (kept under <output_dir>/sharded for reruns) with the memory-first plan of that
benchmark, then deployed in turn on one local Ray cluster with `mrl.service.app.deploy` (a hot swap from the
layout before). For each: recall@10 over HTTP against the exact top-10 of all rows, single-query latency (one
closed-loop client) and q/s (`concurrency` clients), each client on 127.0.0.1 sharing the 2 cores with the
service; and the memory of every shard process (/healthz: structures bytes and the process's RssAnon). Layouts
are measured in `rounds` rounds, the order reversed each round, and the median taken (noisy machine).

Writes <results>.md, .json and .png (latency and q/s against shards) and logs them to MLflow. The capacity plan
(mrlbench.capacity) takes the resident bytes per row of the picks in docs/results/retrieval_scale.json and the
fixed memory of a shard process measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import serve_load
from mrl.configio import ConfigError, load_config, to_dict
from mrlbench.capacity import capacity_plan
from mrlbench.sharded_bench import ShardedBenchConfig

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build(cfg: ShardedBenchConfig, ids, labels, vectors, shards: int) -> tuple[Path, float]:
    """The layout's index directory (built now, or kept from an earlier run) and its build seconds (0: kept)."""
    from mrl.artifacts.index import write_index, write_sharded_index

    out = REPO / cfg.output_dir / "sharded" / f"{len(ids)}-{shards}"
    if (out / "manifest.json").is_file():
        return out, 0.0
    sizes = list(cfg.index.sizes)
    params = {m: cfg.index.params(m) for m in sizes}
    extra = {"index_run_id": f"bench-{len(ids)}-{shards}"}
    t0 = time.time()
    if shards == 1:
        write_index(out, ids, labels, vectors, sizes, cfg.index.kind, extra, params, cfg.index.vector_dtype,
                    codes=cfg.index.codes)
    else:
        write_sharded_index(out, ids, labels, vectors, sizes, cfg.index.kind, extra, params, cfg.index.vector_dtype,
                            codes=cfg.index.codes, shards=shards, by=cfg.index.shard_by, rule=cfg.index.shard_rule)
    return out, time.time() - t0


def health(port: int) -> dict:
    import requests

    return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=60).json()


def memory_of(reply: dict) -> list[dict]:
    """Per search process (the whole index's Retriever, or each shard): structures and RssAnon bytes."""
    parts = reply["shards"] if "shards" in reply else [reply["memory"]]
    return [{"structures_bytes": p["structures_bytes"], "rss_anon_bytes": p["process_rss_anon_bytes"]} for p in parts]


def recall_over_http(port: int, queries: np.ndarray, truth: np.ndarray) -> float:
    import requests

    found = [requests.post(f"http://127.0.0.1:{port}/search", json={"vector": q.tolist(), "k": 10},
                           timeout=60).json()["ids"] for q in queries]
    return float(np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, truth)]))


def measure_layout(cfg: ShardedBenchConfig, index: Path, port: int, bodies, recall_q, truth, first: bool) -> dict:
    from mrl.service.app import deploy

    t0 = time.time()
    deploy(str(index), cfg.serve, name="mrl")
    deployed = time.time() - t0
    serve_load.run_level(port, bodies, 1, 3.0)  # warm-up: page in, open connections
    row = {"deploy_seconds": deployed, "recall": recall_over_http(port, recall_q, truth) if first else None}
    single = serve_load.run_level(port, bodies, 1, cfg.seconds)
    loaded = serve_load.run_level(port, bodies, cfg.concurrency, cfg.seconds)
    row.update(single_p50_ms=single["p50_ms"], single_p99_ms=single["p99_ms"], qps=loaded["rps"],
               loaded_p50_ms=loaded["p50_ms"], errors=single["errors"] + loaded["errors"],
               processes=memory_of(health(port)))
    return row


def run(cfg: ShardedBenchConfig) -> dict:
    import ray
    from ray import serve

    from mrl.artifacts.embeddings import read_embeddings
    from mrl.retrieval.modes import index_source
    from mrl.retrieval.quality import exact_engine, exact_plan

    emb = REPO / cfg.embeddings
    ids, labels, vectors = read_embeddings(emb / "train", cfg.index.vector_dtype)
    _, _, test = read_embeddings(emb / "test")
    pick = np.random.default_rng(0).permutation(len(test))
    bodies = serve_load.vector_bodies(test[pick[:1000]])
    recall_q = test[pick[1000:1000 + cfg.recall_queries]]
    layouts, builds, truths = {}, {}, {}
    for n in cfg.corpora:
        for s in cfg.shards:
            layouts[n, s], builds[n, s] = build(cfg, ids[:n], labels[:n], vectors[:n], s)
            print(f"[sharded] {n:,} rows as {s} shard(s): {layouts[n, s]} (built in {builds[n, s]:.0f}s)", flush=True)
        exact = exact_engine(vectors[:n], [vectors.shape[1]], device="cpu")
        truths[n] = ids[exact.run(exact_plan(index_source(vectors.shape[1]), 10), recall_q).positions]
    del vectors
    port = free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    runs: dict[tuple[int, int], list[dict]] = {key: [] for key in layouts}
    try:
        for n in cfg.corpora:
            for r in range(cfg.rounds):
                for s in (cfg.shards if r % 2 == 0 else cfg.shards[::-1]):
                    row = measure_layout(cfg, layouts[n, s], port, bodies, recall_q, truths[n], r == 0)
                    runs[n, s].append(row)
                    print(f"[sharded] {n:,} rows, {s} shard(s), round {r + 1}: single p50 {row['single_p50_ms']:.2f} "
                          f"ms, {row['qps']:.0f} q/s at {cfg.concurrency} clients, errors {row['errors']}"
                          + (f", recall@10 {row['recall']:.3f}" if row["recall"] is not None else ""), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return summarize(cfg, runs, builds)


def summarize(cfg: ShardedBenchConfig, runs: dict, builds: dict) -> dict:
    rows = []
    for (n, s), measured in runs.items():
        base = runs[n, cfg.shards[0]]
        single = float(np.median([m["single_p50_ms"] for m in measured]))
        qps = float(np.median([m["qps"] for m in measured]))
        procs = measured[-1]["processes"]
        rows.append({"rows": n, "shards": s, "single_p50_ms": single,
                     "single_ratio": single / float(np.median([m["single_p50_ms"] for m in base])),
                     "single_p99_ms": float(np.median([m["single_p99_ms"] for m in measured])),
                     "qps": qps, "qps_ratio": qps / float(np.median([m["qps"] for m in base])),
                     "loaded_p50_ms": float(np.median([m["loaded_p50_ms"] for m in measured])),
                     "recall": measured[0]["recall"], "errors": sum(m["errors"] for m in measured),
                     "build_seconds": builds[n, s], "deploy_seconds": float(np.median([m["deploy_seconds"]
                                                                                        for m in measured])),
                     "structures_mib_per_process": [p["structures_bytes"] / 2**20 for p in procs],
                     "rss_anon_mib_per_process": [p["rss_anon_bytes"] / 2**20 for p in procs],
                     "round_single_p50_ms": [m["single_p50_ms"] for m in measured],
                     "round_qps": [m["qps"] for m in measured]})
    return {"rows": rows, "capacity": capacity(cfg, rows)}


def capacity(cfg: ShardedBenchConfig, rows: list[dict]) -> dict:
    """The 1-billion-row plans from the retrieval benchmark's picks and the fixed memory of a shard process here."""
    scale = json.loads((REPO / "docs/results/retrieval_scale.json").read_text())
    by_label = {r["config"]: r for r in scale["rows"]}
    sharded = [r for r in rows if r["shards"] > 1]
    fixed = float(np.median([rss - st for r in sharded for rss, st in zip(r["rss_anon_mib_per_process"],
                                                                            r["structures_mib_per_process"])])) * 2**20
    plans = []
    for family, label in scale["picks"].items():
        resident = by_label[label]["resident_bytes_per_vector"]
        # the float16 rows are a file only for plans that rerank with them (full-size HNSW holds its own vectors)
        file_bytes = 2 * scale["dim"] if by_label[label]["vector_kib_per_query"] else 0
        for node in cfg.node_memory_gib:
            for replicas in (1, 2, 3):
                plan = capacity_plan(10**9, resident, file_bytes, node * GIB, replicas, process_bytes=fixed)
                plans.append({"family": family, "search": label, "resident_bytes_per_row": resident,
                              "node_memory_gib": node, "replicas": replicas, **plan})
    return {"rows": 10**9, "dim": scale["dim"], "process_fixed_mib": fixed / 2**20, "plans": plans}


def write(cfg: ShardedBenchConfig, result: dict, command: str) -> Path:
    from mrl.plots import pyplot

    out = REPO / cfg.results
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    four = {r["rows"]: r for r in rows if r["shards"] == max(cfg.shards)}
    verdicts = [f"{n:,} rows: {r['single_ratio']:.2f}x ({'met' if r['single_ratio'] <= cfg.target_overhead else 'missed'})"
                for n, r in four.items()]
    s = cfg.serve.search
    lines = ["# Sharded serving on one machine", "",
             f"Command: `{command}`. Date: {time.strftime('%Y-%m-%d')}. Machine: {os.cpu_count()} CPUs (shared, "
             f"noisy: every figure is the median of {cfg.rounds} rounds, layouts in reversed order each round). One "
             f"local Ray cluster; each layout deployed with `mrl.service.app.deploy` (a hot swap from the one "
             f"before): the whole index is one Retriever replica; a sharded one is a Retriever replica and one "
             f"replica per shard, all on the same 2 cores as the clients. Index: `{cfg.index.kind}` on "
             f"{list(cfg.index.sizes)} (hnsw_m {cfg.index.hnsw_m}, ef_construction {cfg.index.ef_construction}), "
             f"codes {[list(c) for c in cfg.index.codes]}, {cfg.index.vector_dtype} vectors memory-mapped; shards by "
             f"{cfg.index.shard_by}, shortlist rule `{cfg.index.shard_rule}`. Plan: {cfg.serve.mode}, "
             f"D_s {s.shortlist_size}, K {s.shortlist_k}, ef {s.ef_search}, funnel {[list(x) for x in s.funnel or ()]}, "
             f"k 10. Queries: test-split embeddings as JSON vectors; single = 1 closed-loop client, q/s = "
             f"{cfg.concurrency} clients, {cfg.seconds:.0f} s each; recall@10 over HTTP on {cfg.recall_queries} other "
             "test queries against the exact top-10 of all rows.", "",
             f"Target: 4 shards' single-query p50 <= {cfg.target_overhead}x the whole index's: " + "; ".join(verdicts),
             "", "| rows | shards | single p50 (ms) | vs whole | single p99 (ms) | q/s | vs whole | p50 at load (ms) | "
             "recall@10 | errors | structures MiB / process | RssAnon MiB / process | build (s) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r['rows']:,} | {r['shards']} | {r['single_p50_ms']:.2f} | {r['single_ratio']:.2f}x | "
                     f"{r['single_p99_ms']:.2f} | {r['qps']:,.0f} | {r['qps_ratio']:.2f}x | {r['loaded_p50_ms']:.1f} | "
                     f"{r['recall']:.3f} | {r['errors']} | "
                     f"{', '.join(f'{x:,.0f}' for x in r['structures_mib_per_process'])} | "
                     f"{', '.join(f'{x:,.0f}' for x in r['rss_anon_mib_per_process'])} | "
                     f"{r['build_seconds']:.0f} |")
    cap = result["capacity"]
    lines += ["", f"## Capacity plan: {cap['rows']:,} rows at d = {cap['dim']}", "",
              "R replicas per shard, at most one per node; 70% of a node's memory for shard replicas; each replica "
              "holds its shard's structures (resident bytes per row, measured in docs/results/retrieval_scale.md) "
              f"plus {cap['process_fixed_mib']:.0f} MiB of fixed process memory (measured here: RssAnon minus "
              "structures of the shard processes); the float16 full vectors (4,096 B a row) are a file on each "
              "replica's node, for the plans that rerank from them. Availability assumes independent node failures at 99.9% uptime; a full answer "
              "needs every shard.", "",
              "| plan | B / row in RAM | node RAM (GiB) | replicas | nodes | shards | rows / shard | RAM used / node "
              "(GiB) | disk / node (TiB) | shard up | full answer up |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in cap["plans"]:
        lines.append(f"| {p['family']}: {p['search']} | {p['resident_bytes_per_row']:,.0f} | {p['node_memory_gib']} | "
                     f"{p['replicas']} | {p['nodes']} | {p['shards']} | {p['rows_per_shard']:,} | "
                     f"{p['resident_gib_per_node']:.0f} | {p['disk_tib_per_node']:.2f} | "
                     f"{100 * p['shard_availability']:.6f}% | {100 * p['full_answer_availability']:.6f}% |")
    md = out.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "config": to_dict(cfg), **result}, indent=1))
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for n in cfg.corpora:
        mine = [r for r in rows if r["rows"] == n]
        axes[0].plot([r["shards"] for r in mine], [r["single_p50_ms"] for r in mine], "o-", label=f"{n:,} rows")
        axes[1].plot([r["shards"] for r in mine], [r["qps"] for r in mine], "o-", label=f"{n:,} rows")
    axes[0].set(xlabel="shards", ylabel="single-query p50 (ms)", title="Latency (1 client)")
    axes[1].set(xlabel="shards", ylabel="queries / s", title=f"Throughput ({cfg.concurrency} clients)")
    for ax in axes:
        ax.set_xticks(list(cfg.shards))
        ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    if out.parent != serve_load.RESULTS:  # results kept elsewhere (a trial run): MLflow gets docs/results' only
        return md
    serve_load.log_to_mlflow("sharded-serving", REPO / cfg.output_dir / "sharded", {
        f"r{r['rows']}_s{r['shards']}_{key}": r[key] for r in rows for key in ("single_p50_ms", "qps", "single_ratio")},
        [md.name, out.with_suffix(".json").name, out.with_suffix(".png").name])
    return md


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "benchmarks" / "sharded_serving.yaml"))
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report (and the capacity plan) from the last run's JSON, measuring nothing")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(ShardedBenchConfig, args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"sharded_serving: config error: {exc}", file=sys.stderr)
        return 2
    command = " ".join(["python benchmarks/sharded_serving.py", *argv])
    if args.report_only:
        last = json.loads((REPO / cfg.results).with_suffix(".json").read_text())
        result, command = {"rows": last["rows"], "capacity": capacity(cfg, last["rows"])}, last["command"]
    else:
        result = run(cfg)
    md = write(cfg, result, command)
    print(md.read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
