"""The training data in a model's lineage is recorded by its content (real Ray Train and MLflow): a tiny model
trained on two Parquet shards records their digest; `mrl lineage` re-checks it, and once a shard changes it
reports the link broken, naming the file, and exits 1."""

import numpy as np
import pytest

from mrl.config import TrainJobConfig
from mrl.configio import load_config

from conftest import REPO

pytestmark = pytest.mark.slow


def shards(root, rows: int = 120, parts: int = 2, flip: int | None = None):
    """`parts` Parquet shards of random 28x28 images under <root>/train; `flip` changes one label in that shard."""
    import pyarrow.parquet as pq

    from mrl.data.readers import image_table

    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True, exist_ok=True)
    for part in range(parts):
        images = rng.integers(0, 255, (rows, 1, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, rows)
        if part == flip:
            labels[0] = (labels[0] + 1) % 10
        ids = np.arange(part * rows, (part + 1) * rows)
        pq.write_table(image_table(images, labels, ids), root / "train" / f"part-{part:05d}.parquet")


def test_lineage_reports_training_data_that_changed_under_the_model(tmp_path, capsys):
    import mlflow
    import ray
    from mlflow import MlflowClient

    from mrl.artifacts import tracking
    from mrl.cli import main
    from mrl.stages.train import run as run_train

    shards(tmp_path / "data")
    out = tmp_path / "out"
    cfg = load_config(TrainJobConfig, REPO / "jobs" / "train.yaml", [
        f"output_dir={out}", "run_name=tiny", "data.source=parquet", f"data.path={tmp_path / 'data'}",
        "data.val_fraction=0.25", "model.dim=16", "model.nesting.schedule=list", "model.nesting.sizes=[8,16]",
        "train.epochs=1", "train.batch_size=30", "resources.num_workers=1", "resources.use_gpu=false",
        "ray.num_cpus=4", "train.cache_blocks=never"])
    try:
        trained = run_train(cfg)
    finally:
        ray.shutdown()
    run = MlflowClient(f"sqlite:///{out}/mlflow.db").get_run(trained["run_id"])
    digest = run.data.tags[tracking.TAG_DATA_DIGEST]
    assert run.data.tags[tracking.TAG_DATA_PATH] == str(tmp_path / "data" / "train") and len(digest) == 64
    assert run.inputs.dataset_inputs[0].dataset.digest == digest[:32]  # MLflow's column holds 36 characters
    assert sorted(mlflow.artifacts.load_dict(f"runs:/{trained['run_id']}/dataset/files.json")["files"]) == [
        "part-00000.parquet", "part-00001.parquet"]
    capsys.readouterr()
    assert main(["lineage", f"target={trained['model_uri']}", f"output_dir={out}"]) == 0
    assert "content verified, 2 files" in capsys.readouterr().out

    shards(tmp_path / "data", flip=1)  # one label of the second shard changed, the first shard rewritten as it was
    assert main(["lineage", f"target={trained['model_uri']}", f"output_dir={out}"]) == 1
    printed = capsys.readouterr()
    line = next(line for line in printed.out.splitlines() if line.startswith("dataset"))
    assert (f"BROKEN: the training data at {tmp_path / 'data' / 'train'} changed since training run "
            f"{trained['run_id']}: 1 changed (part-00001.parquet)") in line, printed.out
    assert "1 broken link(s)" in printed.err
