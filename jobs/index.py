"""Build FAISS indexes per prefix size over the embedded database split, with a manifest.

    python jobs/index.py --config jobs/index.yaml [key=value ...]
    ray job submit --runtime-env jobs/runtime_env.yaml -- python jobs/index.py --config jobs/index.yaml

All logic lives in the `mrl` library (`mrl.cli`); this file is only the entry point.
"""

import sys

from mrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
