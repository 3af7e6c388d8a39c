"""One start-up for every stage: `stage_run` decides what the run prints (`mrl.runtime.captured_output`: by
default the platform's own lines, the rest in <output_dir>/logs), checks the paths the job reads, prepares its
data (before any Ray work), connects to Ray, points MLflow at the store and opens the stage's run, tagged with
what the stage consumed (the tag names of `mrl.artifacts.tracking`, which `mrl.artifacts.lineage` reads back). A
stage module is then its work alone:

    def run(job: IndexJobConfig) -> dict:
        with stage_run("index", job, input_run_id=..., input_uri=...) as stage:
            ...  # stage.job (prepared), stage.run_id, stage.tracking_uri
            stage.wrote(out)
        return {"run_id": stage.run_id, ..., "seconds": stage.seconds}
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mrl.artifacts import tracking
from mrl.data.config import DataConfig
from mrl.data.sources import prepare_data
from mrl.runtime import captured_output, ensure_ray
from mrl.stages.config import check_paths


@dataclasses.dataclass
class StageRun:
    """What a stage's body works with: the prepared job, its MLflow run and the store's URI."""

    job: Any
    run_id: str
    tracking_uri: str
    started: float = dataclasses.field(default_factory=time.time)

    @property
    def seconds(self) -> float:
        return time.time() - self.started

    def wrote(self, path: str | Path) -> None:
        """Record the directory the stage wrote (its output, the next stage's input)."""
        import mlflow

        mlflow.set_tag(tracking.TAG_OUTPUT, str(path))


def prepare(job: Any) -> Any:
    """`job` checked and made ready for workers: its paths exist (ConfigError otherwise), its data is prepared
    (absolute paths, conversions done), and Ray is up when the job names a cluster. Before any Ray work."""
    check_paths(job)
    if isinstance(getattr(job, "data", None), DataConfig):
        job = dataclasses.replace(job, data=prepare_data(job.data, getattr(job, "artifacts", job.output_dir)))
    if getattr(job, "ray", None) is not None:
        ensure_ray(job.ray)
    return job


@contextlib.contextmanager
def stage_run(stage: str, job: Any, *, input_run_id: str = "", input_uri: str = "", run_name: str | None = None,
              tags: dict[str, str] | None = None, prepared: bool = False) -> Iterator[StageRun]:
    """Start stage `stage` for `job` (see the module docstring) and hold its MLflow run open.

    Args:
        stage: the stage's one name (train, embed, index, evaluate, serve), its `mrl.stage` tag.
        job: the stage's validated config.
        input_run_id, input_uri: the run that made the stage's input and the input itself (lineage).
        run_name: the MLflow run's name (default: the stage's name).
        tags: more tags of the run.
        prepared: `job` is already what `prepare` returned (a stage that looks its input up first).
    """
    import mlflow

    with captured_output(stage, job.output_dir, getattr(job, "log_level", "info")):
        job = job if prepared else prepare(job)
        uri = tracking.setup(job.mlflow, job.output_dir)
        lineage = {tracking.TAG_STAGE: stage, tracking.TAG_INPUT_RUN: input_run_id or "",
                   tracking.TAG_INPUT_URI: input_uri or ""}
        with mlflow.start_run(run_name=run_name or stage, tags={**lineage, **(tags or {})}) as run:
            yield StageRun(job=job, run_id=run.info.run_id, tracking_uri=uri)
