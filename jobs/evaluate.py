"""Per-size linear top-1, 1-NN and mAP@10 of an embed run, printed and logged to MLflow.

    python jobs/evaluate.py --config jobs/evaluate.yaml [key=value ...]
    ray job submit --runtime-env jobs/runtime_env.yaml -- python jobs/evaluate.py --config jobs/evaluate.yaml

All logic lives in the `mrl` library (`mrl.cli`); this file is only the entry point.
"""

import sys

from mrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
