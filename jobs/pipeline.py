"""The whole pipeline on local Ray: train, embed, index, evaluate, serve, example query.

    python jobs/pipeline.py --config jobs/pipeline.yaml [key=value ...]
    ray job submit --runtime-env jobs/runtime_env.yaml -- python jobs/pipeline.py --config jobs/pipeline.yaml

All logic lives in the `mrl` library (`mrl.cli`); this file is only the entry point.
"""

import sys

from mrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
