"""Build FAISS indexes per prefix size over the embedded database split, with a manifest.

    python jobs/build_index.py --config jobs/build_index.yaml [key=value ...]
    ray job submit --working-dir . -- python jobs/build_index.py --config jobs/build_index.yaml

All logic lives in the `mrl` library (`mrl.cli`); this file is only the entry point.
"""

import sys

from mrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-index", *sys.argv[1:]]))
