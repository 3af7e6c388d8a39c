"""Embed a data split with a registered model through Ray Data into sharded Parquet.

    python jobs/embed.py --config jobs/embed.yaml [key=value ...]
    ray job submit --runtime-env jobs/runtime_env.yaml -- python jobs/embed.py --config jobs/embed.yaml

All logic lives in the `mrl` library (`mrl.cli`); this file is only the entry point.
"""

import sys

from mrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["embed", *sys.argv[1:]]))
