"""mrl: Matryoshka Representation Learning on Ray.

The library holds all logic; `jobs/`, `tuning/` and `serving/` in the repository are thin entry points.
Importing `mrl` is cheap: heavy dependencies (ray, mlflow, faiss, transformers) are imported where used.
"""

__version__ = "0.1.0"
