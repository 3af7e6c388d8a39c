"""mrl.storage against the local filesystem and a real S3 API (moto's server on 127.0.0.1)."""

import pytest

from mrl import storage


@pytest.mark.parametrize("uri, problem", [
    ("s3://bucket/prefix", None), ("gs://bucket", None), ("/data/x", None), ("file:///mnt/x", None),
    ("s3://key:secret@bucket/x", "carries credentials"), ("s3:///x", "names no bucket"),
    ("hdfs://nn/x", "scheme 'hdfs'"), ("s3://b/x?endpoint_override=h", "query options"), ("", "is empty")])
def test_uri_problems_name_what_is_wrong(uri, problem):
    found = storage.uri_problem(uri)
    assert (found is None) if problem is None else (problem in found)


def test_paths_join_and_split_alike_for_uris_and_local_paths(tmp_path):
    assert storage.join("s3://b/p/", "index", "latest") == "s3://b/p/index/latest"
    assert storage.parent("s3://b/p/index") == "s3://b/p" and storage.name("s3://b/p/index/") == "index"
    assert storage.join(str(tmp_path), "a", "b") == str(tmp_path / "a" / "b")
    assert storage.absolute("rel/x").startswith("/") and storage.absolute("s3://b/x/") == "s3://b/x"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_files_written_listed_read_and_pointed_at(where, tmp_path, request):
    base = str(tmp_path / "root") if where == "local" else request.getfixturevalue("s3_server").bucket() + "/root"
    storage.write_bytes(storage.join(base, "run-1", "b.parquet"), b"bb")
    storage.write_bytes(storage.join(base, "run-1", "a.parquet"), b"a")
    storage.write_bytes(storage.join(base, "run-1", "sub", "c.txt"), b"ccc")
    run = storage.join(base, "run-1")
    assert storage.is_dir(run) and not storage.is_file(run) and not storage.exists(storage.join(base, "nope"))
    assert [storage.name(f) for f in storage.files(run, [".parquet"])] == ["a.parquet", "b.parquet"]
    assert storage.entries(run) == [("a.parquet", False), ("b.parquet", False), ("sub", True)]
    assert [(rel, size) for rel, size, _ in storage.walk(run)] == [("a.parquet", 1), ("b.parquet", 2),
                                                                   ("sub/c.txt", 3)]
    assert storage.read_bytes(storage.join(run, "sub", "c.txt")) == b"ccc"
    if where == "s3":
        storage.point_latest(run)
        assert storage.resolve_latest(storage.join(base, "latest")) == run
    storage.delete_dir(run)
    assert not storage.exists(run)


def test_a_directory_uploads_with_the_named_files_last(tmp_path, s3_server, monkeypatch):
    local = tmp_path / "art"
    (local / "shard-000").mkdir(parents=True)
    for rel in ("x.bin", "manifest.json", "shard-000/y.bin", "shard-000/manifest.json"):
        (local / rel).write_bytes(rel.encode())
    target = s3_server.bucket() + "/art"
    order, real = [], storage.copy_file
    monkeypatch.setattr(storage, "copy_file", lambda src, dst: (order.append(dst), real(src, dst)))
    storage.upload_dir(local, target, last=["shard-000/manifest.json", "manifest.json"])
    assert order[-2:] == [target + "/shard-000/manifest.json", target + "/manifest.json"]
    assert s3_server.keys(target) == ["art/manifest.json", "art/shard-000/manifest.json", "art/shard-000/y.bin",
                                      "art/x.bin"]
    assert storage.sha256(target + "/x.bin") == storage.sha256(local / "x.bin")
