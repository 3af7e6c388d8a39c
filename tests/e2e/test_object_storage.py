"""The pipeline with every artifact in object storage: a real S3 API (moto's server on 127.0.0.1) holds the data
(Parquet shards), Ray Train's checkpoints, the embeddings and the index; output_dir keeps only logs and the MLflow
store. Then the service (which copied its index from the bucket) answers over HTTP, and `mrl lineage` verifies the
chain against the bucket and flags an object changed there."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from mrl import storage
from mrl.cli import main
from mrl.config import PipelineConfig
from mrl.configio import load_config
from mrl.data.formats import load_fashion_mnist
from mrl.data.readers import image_table
from mrl.data.sources import FASHION_MNIST_DIR

from conftest import REPO, free_port

pytestmark = pytest.mark.slow


def upload_fashion_mnist(root: str, rows: dict[str, int]) -> None:
    """The first rows of each Fashion-MNIST split as Parquet shards <root>/<split>/part-*.parquet (ids = positions)."""
    for split, n in rows.items():
        images, labels = load_fashion_mnist(FASHION_MNIST_DIR, split)
        for i, lo in enumerate(range(0, n, 1000)):
            hi = min(n, lo + 1000)
            with storage.open_output(f"{root}/{split}/part-{i:05d}.parquet") as out:
                pq.write_table(image_table(images[lo:hi], labels[lo:hi], np.arange(lo, hi)), out, row_group_size=256)


@pytest.fixture(scope="module")
def s3_pipeline(tmp_path_factory, s3_server):
    import os

    import ray
    from ray import serve

    from mrl.stages.pipeline import run as run_pipeline

    ray.shutdown()  # workers started from here on inherit the endpoint and credentials (and the cache below)
    out = tmp_path_factory.mktemp("s3-pipeline")
    os.environ["MRL_CACHE_DIR"] = str(out / "node-cache")
    bucket = s3_server.bucket()
    upload_fashion_mnist(f"{bucket}/data", {"train": 2000, "test": 400})
    port = free_port()
    cfg = load_config(PipelineConfig, REPO / "jobs" / "pipeline.yaml", [
        f"output_dir={out}", f"artifacts_dir={bucket}/mrl", "run_name=s3", "data.source=parquet",
        f"data.path={bucket}/data", "train.epochs=1", "model.dim=32", f"serve.port={port}",
        "embed.rows_per_file=500", "ray.num_cpus=8"])
    try:
        summary = run_pipeline(cfg, shutdown=False)
        yield cfg, summary, bucket, out
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop("MRL_CACHE_DIR", None)


def test_every_artifact_is_in_the_bucket_and_none_in_output_dir(s3_pipeline, s3_server):
    cfg, summary, bucket, out = s3_pipeline
    keys = s3_server.keys(f"{bucket}/mrl")
    embed_run, index_run = summary["embed_run_id"], summary["index_run_id"]
    assert storage.resolve_latest(f"{bucket}/mrl/index/latest") == f"{bucket}/mrl/index/{index_run}"
    assert f"mrl/index/{index_run}/manifest.json" in keys and f"mrl/embeddings/{embed_run}/manifest.json" in keys
    assert storage.resolve_latest(f"{bucket}/mrl/embeddings/latest") == f"{bucket}/mrl/embeddings/{embed_run}"
    assert any(k.startswith("mrl/ray/s3/") for k in keys)  # Ray Train's checkpoints
    assert any(k.startswith("mrl/embeddings/") and k.endswith("/train/part-00003.parquet") for k in keys)
    assert not (out / "embeddings").exists() and not (out / "index").exists() and not (out / "ray").exists()
    assert (out / "mlflow.db").is_file() and any((out / "logs").iterdir())
    assert summary["per_size"][-1]["nn1"] > 0.5  # 1-NN over 10 classes: far above chance


def test_the_service_loaded_its_index_from_the_bucket_and_answers(s3_pipeline):
    cfg, summary, bucket, out = s3_pipeline
    reply = requests.post(f"{summary['url']}/search", json={"id": 7, "k": 5}, timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["ids"][0] == 7 and len(body["ids"]) == 5
    assert body["index"]["version"] == summary["index_run_id"]
    cached = list((out / "node-cache" / "remote").glob(f"{summary['index_run_id']}-*/manifest.json"))
    assert cached, "the replica's copy of the index is not in the node's cache"
    health = requests.get(f"{summary['url']}/healthz", timeout=30).json()
    assert health["index"]["path"] == f"{bucket}/mrl/index/{summary['index_run_id']}"  # where it is, not the cache


def test_lineage_verifies_the_chain_in_the_bucket_and_flags_a_changed_object(s3_pipeline, capsys):
    cfg, summary, bucket, out = s3_pipeline
    assert main(["lineage", f"output_dir={out}", f"artifacts_dir={bucket}/mrl"]) == 0
    printed = capsys.readouterr().out
    assert f"{bucket}/mrl/index/{summary['index_run_id']}" in printed and f"{bucket}/data/train" in printed
    assert main(["lineage", f"output_dir={out}", f"target={summary['url']}"]) == 0  # from the running service
    assert f"{bucket}/mrl/index/{summary['index_run_id']}" in capsys.readouterr().out
    shard = f"{bucket}/data/train/part-00001.parquet"
    original = storage.read_bytes(shard)
    try:
        table = pq.read_table(storage.open_input(shard))
        with storage.open_output(shard) as f:  # the same rows, one label changed
            labels = table.column("label").to_numpy().copy()
            labels[0] = (labels[0] + 1) % 10
            pq.write_table(table.set_column(1, "label", [labels]), f)
        assert main(["lineage", f"output_dir={out}", f"artifacts_dir={bucket}/mrl"]) == 1
        assert "changed since training run" in capsys.readouterr().out
    finally:
        storage.write_bytes(shard, original)
