"""Ray Tune sweep over MRL nesting schedules and loss weights; every trial is a Ray Train run.

    python tuning/tune.py --config tuning/search_space.yaml [key=value ...]

All logic lives in `mrl.stages.tune`; this file is only the entry point.
"""

import sys

from mrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
