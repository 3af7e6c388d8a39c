"""Train an MRL model with Ray Train (TorchTrainer) and register it in MLflow.

    python jobs/train.py --config jobs/train.yaml [key=value ...]
    ray job submit --runtime-env jobs/runtime_env.yaml -- python jobs/train.py --config jobs/train.yaml

All logic lives in the `mrl` library (`mrl.cli`); this file is only the entry point.
"""

import sys

from mrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
