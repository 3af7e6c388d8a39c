"""The shipped ResNet-50 / ImageNet config on a generated ImageNet-layout JPEG tree (train/<wnid>/*.JPEG,
val/<wnid>/*.JPEG): training streams the files through Ray Data into Ray Train, embedding reads them per unit."""

import json

import numpy as np
import pytest

from mrl.config import EmbedJobConfig, TrainJobConfig
from mrl.configio import load_config

from conftest import REPO

pytestmark = pytest.mark.slow
WNIDS = ("n01440764", "n01443537", "n01484850")


def jpeg_tree(root, per_class: dict[str, int]):
    """Random JPEGs of varied sizes (resized by the reader) in ImageNet's layout."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for wnid in WNIDS:
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(30, 60, size=2)
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                    root / split / wnid / f"{wnid}_{i}.JPEG")


def test_imagenet_layout_streams_through_training_and_embedding(tmp_path):
    import ray

    from mrl.stages.embed import run as run_embed
    from mrl.stages.train import run as run_train

    jpeg_tree(tmp_path / "imagenet", {"train": 12, "val": 4})
    out = tmp_path / "out"
    common = [f"data.path={tmp_path / 'imagenet'}", f"output_dir={out}", "ray.num_cpus=4"]
    cfg = load_config(TrainJobConfig, REPO / "jobs/train_resnet50_imagenet.yaml", common + [
        "model.image_size=32", "run_name=tiny-imagenet", "data.val_fraction=0.25", "train.epochs=1", "train.batch_size=4",
        "resources.num_workers=1", "resources.use_gpu=false", "resources.cpus_per_worker=1",
        "resources.precision=fp32", "train.cache_blocks=never"])  # streamed every epoch, as ImageNet itself
    assert cfg.data.source == "image_folder" and cfg.data.test_split == "val"
    try:
        trained = run_train(cfg)
        # 36 training images: 9 held out for validation, 27 stream as 6 full batches of 4
        assert 0.0 <= trained["metrics"]["val_top1_d2048"] <= 1.0 and trained["metrics"]["epoch"] == 1
        embed = load_config(EmbedJobConfig, REPO / "jobs/embed.yaml", common + [
            f"model_uri={trained['model_uri']}", "run_name=val", "embed.splits=[test]", "embed.rows_per_file=5",
            "embed.batch_size=4", "embed.num_actors=1", "mlflow.registered_model=mrl-resnet50-imagenet",
            "mlflow.experiment=mrl-imagenet", "data.source=image_folder", "data.test_split=val"])
        result = run_embed(embed)
    finally:
        ray.shutdown()
    manifest = json.loads((out / "embeddings" / "val" / "manifest.json").read_text())
    assert result["rows"] == {"test": 12} and manifest["dim"] == 2048
    assert manifest["verified"]["test"] == {"rows": 12, "files": 3, "duplicates": 0, "missing": 0}
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "embeddings" / "val" / "test").sort_by("id")
    assert rows.column("id").to_pylist() == list(range(12))
    assert rows.column("label").to_pylist() == [0] * 4 + [1] * 4 + [2] * 4  # wnids in sorted order
