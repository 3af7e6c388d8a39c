"""A/B the retrieval benchmark between two versions of the code, on the same embeddings and machine.

    python benchmarks/retrieval_ab.py --base a67329d [--config benchmarks/retrieval.yaml] [--rounds 2]
                                      [--embeddings outputs/embeddings/latest]

Checks out `--base` in a temporary git worktree, then runs `benchmarks/retrieval.py` alternately with the
base's library and with this checkout's (base, head, base, head, ...), each on the same embeddings, and
writes docs/results/retrieval_ab.md: per configuration, whether the accuracy columns are identical, and the
median queries/second of each side over the rounds with their ratio. Alternating rounds spread the
machine's noise over both sides. Expect `--rounds` x 2 x the benchmark's own time (~1 minute each for the
60k set on 2 cores).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ACCURACY = ("top1", "map", "precision", "shortlist_recall", "result_recall")


def run_side(checkout: Path, config: str, embeddings: str, out: Path) -> dict:
    """One benchmark run with the library of `checkout` (its platform/ first on the path); returns its JSON."""
    env = {**os.environ, "PYTHONPATH": str(checkout / "platform")}
    cmd = [sys.executable, str(checkout / "benchmarks" / "retrieval.py"), "--config", str(checkout / config),
           f"output_dir={out}", f"embeddings={embeddings}", f"results={out / 'retrieval'}"]
    subprocess.run(cmd, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "retrieval.json").read_text())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git revision to compare against (e.g. a commit id)")
    parser.add_argument("--config", default="benchmarks/retrieval.yaml")
    parser.add_argument("--embeddings", default="outputs/embeddings/latest")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--results", default="docs/results/retrieval_ab.md")
    args = parser.parse_args(argv)
    embeddings = str(Path(args.embeddings).resolve())
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="mrl-ab-"))
    base_tree = work / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=REPO, check=True,
                   capture_output=True)
    runs: dict[str, list[dict]] = {"base": [], "head": []}
    started = time.time()
    try:
        for i in range(args.rounds):
            for side, tree in (("base", base_tree), ("head", REPO)):
                runs[side].append(run_side(tree, args.config, embeddings, work / f"{side}{i}"))
                print(f"[ab] round {i + 1}/{args.rounds} {side} done ({time.time() - started:.0f}s)", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO, capture_output=True)
    lines = [f"# Retrieval benchmark A/B: {args.base} (base) against {head} (head)", "",
             f"Command: `python benchmarks/retrieval_ab.py --base {args.base} --config {args.config} "
             f"--rounds {args.rounds}`. Date: {time.strftime('%Y-%m-%d')}. Machine: "
             f"{runs['head'][0]['machine']}.", "",
             f"Same embeddings ({embeddings}: {runs['head'][0]['rows_database']:,} x {runs['head'][0]['dim']}, "
             f"{runs['head'][0]['queries']:,} queries), runs alternating base, head, ... over {args.rounds} rounds; "
             "q/s is the median over rounds of each run's own median batch pass.", "",
             "| config | accuracy columns identical | base mAP@10 | head mAP@10 | base q/s | head q/s | head / base | "
             "base single (ms) | head single (ms) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for i, row in enumerate(runs["head"][0]["rows"]):
        base_rows = [r["rows"][i] for r in runs["base"]]
        head_rows = [r["rows"][i] for r in runs["head"]]
        same = all(b[key] == h[key] for b in base_rows for h in head_rows for key in ACCURACY)
        base_qps = statistics.median(r["qps"] for r in base_rows)
        head_qps = statistics.median(r["qps"] for r in head_rows)
        singles = [statistics.median(r["single_ms"] for r in rows) if rows[0]["single_ms"] else None
                   for rows in (base_rows, head_rows)]
        shown = ["-" if ms is None else f"{ms:.2f}" for ms in singles]
        lines.append(f"| {row['config']} | {'yes' if same else 'NO'} | {100 * base_rows[0]['map']:.2f} | "
                     f"{100 * row['map']:.2f} | {base_qps:,.0f} | {head_qps:,.0f} | {head_qps / base_qps:.2f}x | "
                     f"{shown[0]} | {shown[1]} |")
    out = REPO / args.results
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
