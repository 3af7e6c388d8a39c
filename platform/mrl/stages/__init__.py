"""The stages (the top layer): each module's `run(job)` is one stage, started by `stage.stage_run` (paths, data,
Ray, MLflow run and lineage tags) and meeting the next through an artifact on disk.

- `train` (Ray Train), `tune` (Ray Tune), `embed` (Ray Data), `index` (FAISS), `evaluate`, `serve` (Ray Serve),
  and `pipeline`, which runs them in order.
- `config`: every job's config, composed from the packages' sections.
- `objectives`: what a training epoch optimises (classification per size, or text pairs contrastively).
"""

__all__ = ["config", "embed", "evaluate", "index", "objectives", "pipeline", "serve", "stage", "train", "tune"]
