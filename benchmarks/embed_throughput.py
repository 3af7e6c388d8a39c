"""The embed stage (Ray Data, an actor pool) against a plain PyTorch loop doing the same work, in one run,
on the Fashion-MNIST train split (60,000 rows) and on it grown by augmentation to 1,000,000 rows; peak
resident memory of the stage's driver and actors for both (logic in mrlbench.embed_bench).

    ./quickstart.sh        # once: registers models:/mrl-fashion-mnist (the model embedded here)
    python benchmarks/embed_throughput.py [--model-uri URI] [--output-dir outputs]   # ~12 min on 2 cores

Writes docs/results/embed_throughput.md and .json.

    python benchmarks/embed_throughput.py --storage   # ~6 min: the train split with data and output on local
                                                      # disk against both on an S3 endpoint (moto, 127.0.0.1)

Writes docs/results/embed_storage.md and .json (needs the test extra's moto[server]).
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", default="models:/mrl-fashion-mnist@champion")
    parser.add_argument("--output-dir", default=str(REPO / "outputs"))
    parser.add_argument("--large", type=int, default=1_000_000, help="rows of the augmented corpus")
    parser.add_argument("--storage", action="store_true", help="local disk against an S3 endpoint instead")
    parser.add_argument("--rounds", type=int, default=2, help="--storage: alternating rounds")
    args = parser.parse_args(argv)
    from mrlbench.embed_bench import render, render_storage, run, run_storage

    command = " ".join(["python benchmarks/embed_throughput.py", *argv])
    if args.storage:
        result = run_storage(REPO, Path(args.output_dir).resolve(), args.model_uri, args.rounds)
        stem, text = REPO / "docs" / "results" / "embed_storage", render_storage(result, command)
    else:
        result = run(REPO, Path(args.output_dir).resolve(), args.model_uri,
                     {"train split": None, "augmented": args.large})
        stem, text = REPO / "docs" / "results" / "embed_throughput", render(result, command)
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({"command": command, **result}, indent=1))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
