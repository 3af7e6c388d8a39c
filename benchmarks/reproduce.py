"""Reproduce the MRL paper's comparison in shape on Fashion-MNIST: MRL and MRL-E against FF-m models and
PCA / first-m / random-projection reductions of FF-d at every size, plus adaptive classification.

    python benchmarks/reproduce.py [--quick] [key=value ...]

Full run (benchmarks/reproduce.yaml): compact CNN (16/32 channels), d = 512, sizes 2..512, 2 epochs,
3 seeds: 33 models trained two at a time; expect ~45 minutes on 2 CPU cores. --quick
(benchmarks/reproduce_quick.yaml): 10,000 training images, d = 64, 1 epoch, 1 seed; ~5 minutes.
Writes docs/results/<results_name>.{md,csv,json} and plots, and logs them to MLflow.
"""

import sys
from pathlib import Path

from mrl.configio import ConfigError, load_config
from mrlbench.reproduce import ReproduceConfig, run_reproduce

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    overrides = [a for a in argv if a != "--quick"]
    config = HERE / ("reproduce_quick.yaml" if quick else "reproduce.yaml")
    try:
        cfg = load_config(ReproduceConfig, config, overrides)
    except ConfigError as exc:
        print(f"reproduce: config error: {exc}", file=sys.stderr)
        return 2
    run_reproduce(cfg, HERE.parent / "docs" / "results",
                  command=" ".join(["python benchmarks/reproduce.py", *argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
