"""How well each prefix of the embeddings ranks on its own, on the benchmark's tuning queries: the share of
the exact full-size top-k inside the exact top-K of the m-dim prefix (an upper bound for any shortlist of K on
that prefix), and the prefix's own mAP@k (logic in mrlbench.retrieval_bench.prefix_study).

    python benchmarks/prefix_recall.py --config benchmarks/retrieval_scale.yaml   # ~5 min at 1M x 2048

Writes <results>_prefixes.md, .json and .png beside the retrieval benchmark's results.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from mrl.configio import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
SIZES = (16, 32, 64, 128, 256, 512, 1024)
SHORTLISTS = (10, 20, 50, 100, 200, 400)


def render(result: dict, command: str) -> str:
    k = result["k"]
    lines = [f"# How well each prefix ranks on its own ({result['rows_database']:,} x {result['dim']})", "",
             f"Command: `{command}`. Date: {time.strftime('%Y-%m-%d')}. {result['queries']:,} {result['query_set']} "
             f"queries; embeddings {result['model_uri']}. Exact search on the m-dim prefix; recall = share of the "
             f"exact full-size top-{k} inside the prefix's top-K, an upper bound for any shortlist of K built on "
             "that prefix.", "",
             f"| prefix | mAP@{k} of its own top-{k} | " + " | ".join(f"recall in top-{s}" for s in result["shortlists"])
             + " |", "|---:|---:|" + "---:|" * len(result["shortlists"])]
    for r in result["rows"]:
        lines.append(f"| {r['size']} | {100 * r['map']:.2f} | "
                     + " | ".join(f"{100 * v:.1f}%" for v in r["recall"].values()) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    from mrl.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in result["rows"]:
        if r["size"] == result["dim"]:
            continue
        ax.plot(result["shortlists"], [100 * v for v in r["recall"].values()], marker="o", label=f"{r['size']} dims")
    ax.set_xscale("log")
    ax.set_xlabel("shortlist K (exact search on the prefix)")
    ax.set_ylabel(f"exact full-size top-{result['k']} found (%)")
    ax.set_title("How many candidates each prefix needs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "benchmarks" / "retrieval_scale.yaml"))
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    from mrlbench.retrieval_bench import RetrievalBenchConfig, prefix_study

    try:
        cfg = load_config(RetrievalBenchConfig, args.config, args.overrides)
        logging.basicConfig(level=logging.INFO, format="[prefixes %(asctime)s] %(message)s", datefmt="%H:%M:%S")
        result = prefix_study(cfg, SIZES, SHORTLISTS)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"prefix_recall: {exc}", file=sys.stderr)
        return 2
    stem = REPO / f"{cfg.results}_prefixes"
    command = " ".join(["python benchmarks/prefix_recall.py", *argv])
    stem.with_suffix(".md").write_text(render(result, command))
    stem.with_suffix(".json").write_text(json.dumps({"command": command, **result}, indent=1))
    plot(result, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
