"""The index stage (mrl.stages.index) against a real MLflow store: `latest` moves last, only once MLflow holds
the run's artifacts, so a failed artifact copy leaves it on the previous good index."""

import numpy as np
import pytest

from mrl.artifacts.embeddings import embedding_files
from mrl.artifacts.manifest import read_manifest, write_manifest
from mrl.stages.embed import embedding_table, unit_path, write_atomically


def embed_run(path, rows: dict[str, int], dim: int = 16):
    """An embed run directory as the embed stage leaves it: a unit file per split and a manifest listing them."""
    rng = np.random.default_rng(0)
    for split, n in rows.items():
        (path / split).mkdir(parents=True)
        z = rng.normal(size=(n, dim)).astype(np.float32)
        write_atomically(embedding_table(np.arange(n), np.arange(n) % 4, z, "float32"), unit_path(path / split, 0))
    write_manifest(path, {"stage": "embed", "embed_run_id": "embed-run", "dim": dim, "sizes": [8, dim],
                          "rows": rows, "model_uri": None, "files": embedding_files(path, rows)})
    return path


def test_a_failed_artifact_copy_leaves_latest_on_the_previous_index(tmp_path):
    """The second run's MLflow experiment stores artifacts under a path that cannot be created (a regular file
    stands where its directory would be: a real copy failure, as a full or read-only disk, and one that root
    cannot write past either). The run fails, and `latest` still names the first run's index."""
    import mlflow
    from mlflow import MlflowClient

    from mrl.config import IndexJobConfig
    from mrl.configio import from_dict
    from mrl.stages.index import run

    emb = embed_run(tmp_path / "embeddings" / "e1", {"train": 300, "test": 40})
    job = {"output_dir": str(tmp_path), "embeddings": str(emb), "index": {"sizes": [8, 16]}}
    first = run(from_dict(IndexJobConfig, job))
    latest = tmp_path / "index" / "latest"
    assert latest.resolve() == tmp_path / "index" / first["run_id"]
    assert "calibration" in read_manifest(latest, stage="index")  # the atomic manifest rewrite after calibrating

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the artifact root's directory would be")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.create_experiment("broken-store", artifact_location=(blocker / "artifacts").as_uri())
    with pytest.raises(OSError):
        run(from_dict(IndexJobConfig, {**job, "mlflow": {"experiment": "broken-store"}}))
    assert latest.resolve() == tmp_path / "index" / first["run_id"]  # not the failed run's index
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    failed = client.search_runs([client.get_experiment_by_name("broken-store").experiment_id])
    assert [r.info.status for r in failed] == ["FAILED"]
    assert (tmp_path / "index" / failed[0].info.run_id / "manifest.json").is_file()  # written, never made latest


def test_a_sharded_build_writes_checked_shards_and_calibrates_over_them(tmp_path):
    """index.shards: 3 complete shard artifacts under one manifest (rows, id ranges, manifest checksums), each
    opened only when it matches the listing; the calibration table is measured over the shards and merged, so
    its full-size plan finds the exact top-k."""
    from mrl.artifacts.index import IndexMismatchError, load_shard
    from mrl.config import IndexJobConfig
    from mrl.configio import from_dict
    from mrl.stages.index import run

    emb = embed_run(tmp_path / "embeddings" / "e1", {"train": 300, "test": 40})
    job = {"output_dir": str(tmp_path), "embeddings": str(emb),
           "index": {"sizes": [8, 16], "shards": 3, "shard_by": "range", "shard_rule": "split"}}
    out = run(from_dict(IndexJobConfig, job))
    top = read_manifest(out["path"], stage="index")
    listing = top["shards"]["list"]
    assert [s["rows"] for s in listing] == [100, 100, 100] and [s["id_min"] for s in listing] == [0, 100, 200]
    assert top["shards"]["rule"] == "split" and top["rows"] == 300
    rows = {r["setting"]["mode"]: r["recall"] for r in top["calibration"]["rows"]}
    assert rows["full"] == 1.0
    shard = load_shard(out["path"], 1)
    assert shard.ids.tolist() == list(range(100, 200)) and shard.manifest["shard"] == 1
    manifest = read_manifest(shard.path, stage="index")
    write_manifest(shard.path, {**manifest, "note": "edited"})  # rewritten: its checksum is no longer the listed one
    with pytest.raises(IndexMismatchError, match="does not match the checksum"):
        load_shard(out["path"], 1)
    with pytest.raises(IndexMismatchError, match="shards 0..2, not 3"):
        load_shard(out["path"], 3)
