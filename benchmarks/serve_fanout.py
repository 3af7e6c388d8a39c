"""What one scatter costs: n parallel calls from inside a Ray Serve replica to n other processes, as Serve
handle calls (one deployment per callee) against plain Ray actor calls, side by side in one run.

    python benchmarks/serve_fanout.py [--calls 200] [--rounds 3]

The callees do nothing but return a slice of their (1, 2048) float32 argument, so the figures are the transport
alone: what the Retriever of a sharded index pays per query to reach its shards (`mrl.service.shards.Scatter`
uses actor calls because of this measurement). Each round times `--calls` scatters of 1, 2 and 4 calls per
transport, the transports alternating; the report gives the median over rounds of each round's median. Writes
docs/results/serve_fanout.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
FANOUTS = (1, 2, 4)


class Callee:
    def search(self, x):
        return "v", x[:1]


def caller_class():
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.5})
    class Caller:
        def __init__(self, n: int):
            import ray

            self.handles = [serve.get_deployment_handle("Callee", app_name=f"callee{i}") for i in range(n)]
            self.actors = [ray.remote(Callee).options(num_cpus=0).remote() for _ in range(n)]

        async def scatter(self, transport: str, n: int, calls: int) -> float:
            """The median ms of `calls` scatters of n parallel calls."""
            x, times = np.zeros((1, 2048), np.float32), []
            for _ in range(calls):
                t0 = time.perf_counter()
                if transport == "serve":
                    await asyncio.gather(*(self.handles[i].search.remote(x) for i in range(n)))
                else:
                    await asyncio.gather(*(self.actors[i].search.remote(x) for i in range(n)))
                times.append(time.perf_counter() - t0)
            return 1000 * float(np.median(times))

    return Caller


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=4, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    runs: dict[tuple[str, int], list[float]] = {}
    try:
        for i in range(max(FANOUTS)):
            serve.run(serve.deployment(Callee, name="Callee", ray_actor_options={"num_cpus": 0.5}).bind(),
                      name=f"callee{i}", route_prefix=None)
        caller = serve.run(caller_class().bind(max(FANOUTS)), name="caller", route_prefix=None)
        for transport in ("serve", "actor"):  # warm-up: connections, routers
            caller.scatter.remote(transport, max(FANOUTS), 50).result()
        for r in range(args.rounds):
            for transport in (("serve", "actor") if r % 2 == 0 else ("actor", "serve")):
                for n in FANOUTS:
                    ms = caller.scatter.remote(transport, n, args.calls).result()
                    runs.setdefault((transport, n), []).append(ms)
                    print(f"[fanout] round {r + 1}: {transport} x{n}: {ms:.2f} ms", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    rows = [{"fanout": n, "serve_ms": float(np.median(runs["serve", n])), "actor_ms": float(np.median(runs["actor", n])),
             "serve_rounds": runs["serve", n], "actor_rounds": runs["actor", n]} for n in FANOUTS]
    lines = ["# Fan-out from a Serve replica: Serve handle calls against Ray actor calls", "",
             f"Command: `python benchmarks/serve_fanout.py {' '.join(argv)}`. Date: {time.strftime('%Y-%m-%d')}. "
             f"Machine: {os.cpu_count()} CPUs (shared). A Serve replica makes {args.calls} scatters of n parallel "
             "calls to n callees that return at once (a (1, 2048) float32 argument), through Serve deployment "
             f"handles or plain Ray actor handles; median of {args.rounds} rounds' medians, transports alternating.",
             "", "| parallel calls | Serve handles (ms) | Ray actors (ms) | ratio |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['fanout']} | {r['serve_ms']:.2f} | {r['actor_ms']:.2f} | {r['serve_ms'] / r['actor_ms']:.1f}x |"
              for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_fanout.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "serve_fanout.json").write_text(json.dumps({"calls": args.calls, "rounds": args.rounds, "rows": rows},
                                                          indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
