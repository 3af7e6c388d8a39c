"""Deploy the adaptive-retrieval service (Ray Serve) over a built index and keep it up.

    python serving/app.py --config serving/serve.yaml [index_dir=outputs/index/<run id>]
    serve run serving/config.yaml            (the same app through a Ray Serve config file)

All logic lives in `mrl.service` (the service) and `mrl.stages.serve` (deploy + MLflow record); this file is only the entry point.
"""

import sys

from mrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
