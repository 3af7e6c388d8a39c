"""Measure the quickstart: run jobs/pipeline.py end to end and record wall time and per-size metrics.

    python benchmarks/quickstart.py [key=value ...]      (overrides go to jobs/pipeline.yaml)

Writes docs/results/quickstart.md, quickstart.json and quickstart_accuracy_vs_size.png. The README's
quickstart figures come from here. Expect ~6-8 minutes on 2 CPU cores.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"


def main() -> int:
    out = Path(tempfile.mkdtemp(prefix="mrl-quickstart-"))
    cmd = [sys.executable, "jobs/pipeline.py", "--config", "jobs/pipeline.yaml", f"output_dir={out}", *sys.argv[1:]]
    env = dict(os.environ)
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    wall = time.time() - started
    if proc.returncode != 0:
        print(f"pipeline failed with exit code {proc.returncode}", file=sys.stderr)
        return proc.returncode
    summary = json.loads((out / "pipeline_summary.json").read_text())
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    rows = summary["per_size"]
    # recall@10 (10 hits over ~6,000 same-class items, ~0.17% at best) stays in quickstart.json, not the table
    table = ["| size | linear top-1 | 1-NN | mAP@10 | P@10 |", "|---:|---:|---:|---:|---:|"]
    table += [f"| {r['size']} | {100 * r['top1']:.2f} | {100 * r['nn1']:.2f} | {100 * r['map@10']:.2f} | "
              f"{100 * r['precision@10']:.2f} |" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = [
        "# Quickstart pipeline: measured", "",
        f"Command: `{' '.join(['python benchmarks/quickstart.py', *sys.argv[1:]])}` (runs "
        "`jobs/pipeline.py --config jobs/pipeline.yaml`, setup not included)", "",
        f"Machine: {machine}. Date: {time.strftime('%Y-%m-%d')}.", "",
        f"Wall time of the pipeline process: {wall:.0f} s (stages, s: {summary['stage_seconds']}).", "",
        "Fashion-MNIST test split (10,000 queries) against the train split (60,000) as database; linear top-1",
        "from the model's own head at each size; all figures in %.", "", *table, "",
        f"Example query answered by the running service (embedding of test image "
        f"{summary['example']['query_id']}, label {summary['example']['query_label']}): ids "
        f"{summary['example']['reply']['ids']}, labels {summary['example']['reply']['labels']}, "
        f"in {summary['example']['reply']['took_ms']:.1f} ms inside the replica.", "",
    ]
    (RESULTS / "quickstart.md").write_text("\n".join(text))
    (RESULTS / "quickstart.json").write_text(json.dumps({"wall_seconds": round(wall, 1), "machine": machine,
                                                         **summary}, indent=2))
    plots = list((out / "eval").glob("*/accuracy_vs_size.png"))
    if plots:
        shutil.copy(plots[0], RESULTS / "quickstart_accuracy_vs_size.png")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
