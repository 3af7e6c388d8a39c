"""Artifacts in object storage (mrl.artifacts.remote) on moto's S3 server: an index uploaded manifests last, copied
into a node's cache (only what its manifest lists, a sharded index's asked-for shards only), checked there, and
re-copied only where the bucket's object changed."""

import numpy as np
import pytest

from mrl import storage
from mrl.artifacts.index import load_index, load_shard, shard_manifest, write_index, write_sharded_index
from mrl.artifacts.remote import artifact_location, cache_dir_for, local_copy, publish


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MRL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def vectors(rows: int = 300, dim: int = 16):
    rng = np.random.default_rng(0)
    return np.arange(rows), rng.integers(0, 5, rows), rng.standard_normal((rows, dim)).astype(np.float32)


def test_an_index_in_a_bucket_loads_from_a_checked_copy_and_a_changed_object_is_caught(tmp_path, cache, s3_server,
                                                                                       monkeypatch):
    ids, labels, db = vectors()
    manifest = write_index(tmp_path / "idx", ids, labels, db, [4, 16], "flat", {"index_run_id": "v1"})
    uri = s3_server.bucket() + "/index/v1"
    publish(tmp_path / "idx", uri)
    storage.point_latest(uri)
    assert artifact_location(storage.join(storage.parent(uri), "latest")) == uri
    local = local_copy(storage.join(storage.parent(uri), "latest"))
    assert local == cache_dir_for(uri) and local.is_relative_to(cache)
    assert sorted(p.name for p in local.iterdir()) == sorted(["manifest.json", *manifest["checksums"]])
    loaded = load_index(local)
    assert np.array_equal(loaded.ids, ids) and loaded.version == "v1"

    kept = {p.name: p.stat().st_mtime_ns for p in local.iterdir() if p.name != "manifest.json"}
    local_copy(uri)  # every cached file matches its checksum: nothing downloaded again
    assert {p.name: p.stat().st_mtime_ns for p in local.iterdir() if p.name != "manifest.json"} == kept

    name = sorted(manifest["checksums"])[0]
    storage.write_bytes(f"{uri}/{name}", b"changed in the bucket")
    assert load_index(local_copy(uri)).version == "v1"  # this node's copy is the one the manifest vouches for
    monkeypatch.setenv("MRL_CACHE_DIR", str(tmp_path / "another-node"))
    with pytest.raises(ValueError, match=f"{name} does not match its manifest checksum"):
        load_index(local_copy(uri))  # a node copying it now gets the changed object, and the reader refuses it


def test_a_shard_replica_copies_only_its_shard_and_lineage_checks_shards_in_the_bucket(tmp_path, cache, s3_server):
    ids, labels, db = vectors(400)
    write_sharded_index(tmp_path / "sharded", ids, labels, db, [16], "flat", {"index_run_id": "v2"}, shards=3,
                        by="hash")
    uri = s3_server.bucket() + "/index/v2"
    publish(tmp_path / "sharded", uri)
    top = local_copy(uri, shards=())
    assert sorted(p.name for p in top.iterdir()) == ["manifest.json"]
    local = local_copy(uri, shards=[1])
    assert sorted(p.name for p in local.iterdir()) == ["manifest.json", "shard-001"]
    shard = load_shard(local, 1)
    assert shard.manifest["shard"] == 1 and 0 < len(shard.ids) < 400
    manifest, where, own = shard_manifest(uri, 2)  # held to the top-level listing in the bucket itself
    assert where == f"{uri}/shard-002" and own["shard"] == 2
