"""The train stage (Ray Train, 1 worker, image rows through Ray Data: blocks cached after one read, the default
for a split this size, and streamed every epoch) against the same training loop in one process over in-memory
tensors, in one run: same model (jobs/train.yaml's CNN), data, batch, epochs and threads (logic in
mrlbench.train_bench).

    python benchmarks/train_throughput.py [--rows 20000] [--epochs 3] [--repeats 3] [--output-dir outputs/train_bench]
    # ~11 min on 2 cores with the defaults

Writes docs/results/train_throughput.md and .json.
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="Fashion-MNIST training rows (before validation)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="times the three ways run in turn")
    parser.add_argument("--output-dir", default=str(REPO / "outputs" / "train_bench"))
    args = parser.parse_args(argv)
    from mrlbench.train_bench import default_job, render, run

    job = default_job(Path(args.output_dir).resolve(), args.rows, args.epochs, args.threads)
    train_rows = args.rows - int(round(args.rows * job.data.val_fraction))
    result = run(job, train_rows, args.repeats)
    command = " ".join(["python benchmarks/train_throughput.py", *argv])
    stem = REPO / "docs" / "results" / "train_throughput"
    stem.with_suffix(".md").write_text(render(result, command))
    stem.with_suffix(".json").write_text(json.dumps({"command": command, **result}, indent=1))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
