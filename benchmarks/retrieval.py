"""Retrieval benchmark: exact full-size search against adaptive, funnel, HNSW, IVF and AdANNS-style search,
side by side in one run with the same threads (logic in mrlbench.retrieval_bench).

    python benchmarks/retrieval.py --config benchmarks/retrieval.yaml [key=value ...]        # 60k x 512, ~1.5 min
    python benchmarks/retrieval.py --config benchmarks/retrieval_scale.yaml [key=value ...]  # 1M x 2048

Each config file says which embeddings it reads and how to produce them. Writes <results>.md, .json and
_pareto.png (docs/results/ by default) and logs them to MLflow.
"""

import argparse
import logging
import sys
from pathlib import Path

from mrl.configio import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "benchmarks" / "retrieval.yaml"))
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    from mrlbench.retrieval_bench import RetrievalBenchConfig, run_benchmark
    from mrlbench.retrieval_report import write_results

    try:
        cfg = load_config(RetrievalBenchConfig, args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"retrieval: config error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[retrieval %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    result = run_benchmark(cfg)
    md = write_results(cfg, result, " ".join(["python benchmarks/retrieval.py", *argv]), REPO)
    print(md.read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
