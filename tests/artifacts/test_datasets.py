"""Content digests of training data (mrl.artifacts.datasets): names, sizes and bytes all count; the cache keys a
file's sha256 by (path, size, mtime)."""

import hashlib
import json
import os

from mrl.artifacts.datasets import dataset_digest, dataset_files, describe_changes, file_digests


def tree(root):
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "a" / "x.jpg").write_bytes(b"x" * 10)
    (root / "train" / "b.parquet").write_bytes(b"b")
    (root / "train" / ".b.parquet.tmp-host-1-u").write_bytes(b"half")  # hidden: a writer's temporary file
    return root / "train"


def test_every_visible_file_counts_by_name_size_and_content(tmp_path):
    data = tree(tmp_path)
    assert [name for name, _ in dataset_files(data)] == ["a/x.jpg", "b.parquet"]
    files = file_digests(data)
    assert files == {"a/x.jpg": [10, hashlib.sha256(b"x" * 10).hexdigest()],
                     "b.parquet": [1, hashlib.sha256(b"b").hexdigest()]}
    digest = dataset_digest(files)
    (data / "b.parquet").write_bytes(b"c")  # same size, other bytes
    assert dataset_digest(file_digests(data)) != digest
    (data / "b.parquet").write_bytes(b"b")
    assert dataset_digest(file_digests(data)) == digest
    (data / "b.parquet").rename(data / "c.parquet")  # same bytes, other name
    now = file_digests(data)
    assert dataset_digest(now) != digest
    assert describe_changes(files, now) == "1 missing (b.parquet); 1 new (c.parquet)"
    assert file_digests(data / "a" / "x.jpg") == {"x.jpg": files["a/x.jpg"]}  # one file is a dataset too


def test_the_cache_keeps_a_files_digest_until_its_size_or_mtime_moves(tmp_path):
    data, cache = tree(tmp_path), tmp_path / "cache" / "digests.json"
    for f in (data / "a" / "x.jpg", data / "b.parquet"):
        os.utime(f, ns=(10**18, 10**18))  # settled files (a file modified this instant is never cached)
    first = file_digests(data, cache)
    assert len(json.loads(cache.read_text())) == 2
    entry = json.loads(cache.read_text())
    key = str((data / "b.parquet").resolve())
    entry[key][2] = "cached"
    cache.write_text(json.dumps(entry))
    assert file_digests(data, cache)["b.parquet"] == [1, "cached"]  # (path, size, mtime) unchanged: not reread
    (data / "b.parquet").write_bytes(b"c")  # mtime moves: read again
    assert file_digests(data, cache)["b.parquet"] == [1, hashlib.sha256(b"c").hexdigest()] != first["b.parquet"]
