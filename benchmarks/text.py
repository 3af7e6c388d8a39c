"""The MRL comparison on text (WordNet definition -> synset document): MRL against FF-m models, the first m
dimensions and PCA of the non-MRL model FF-d, and BM25, at every size; plus MRL's adaptive retrieval.

    python benchmarks/text.py [--quick] [key=value ...]

Full run (benchmarks/text.yaml): every training pair, d = 128 (sizes 8..128), 3 seeds: 18 small BERT models
trained one after another in this process; see the YAML header for the expected time. --quick
(benchmarks/text_quick.yaml): 30,000 training pairs, 2 epochs, 1 seed; under 10 minutes on 2 CPU cores.
Writes docs/results/<results_name>.{md,csv,json} and plots, and logs them to MLflow (experiment text-bench).
"""

import sys
from pathlib import Path

from mrl.configio import ConfigError, load_config
from mrlbench.text_bench import TextBenchConfig, run_text_bench

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    overrides = [a for a in argv if a != "--quick"]
    config = HERE / ("text_quick.yaml" if quick else "text.yaml")
    try:
        cfg = load_config(TextBenchConfig, config, overrides)
    except ConfigError as exc:
        print(f"text: config error: {exc}", file=sys.stderr)
        return 2
    try:
        run_text_bench(cfg, HERE.parent / "docs" / "results",
                       command=" ".join(["python benchmarks/text.py", *argv]))
    except ConfigError as exc:  # a path that does not exist here (check_paths)
        print(f"text: config error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
