"""Where MLflow records runs, models and artifacts (`MlflowConfig`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class MlflowConfig:
    """Where runs, models and artifacts are recorded."""

    tracking_uri: str | None = None
    """None: MLflow's embedded sqlite store at <output_dir>/mlflow.db (artifacts in <output_dir>/mlartifacts)."""
    experiment: str = "mrl"
    registered_model: str = "mrl-fashion-mnist"
