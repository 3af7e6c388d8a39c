"""Content digests of training data (mrl.artifacts.datasets): names, sizes and bytes all count, over the files
the readers open (symlinked class directories, dot-files); the cache keys a file's sha256 by (path, size, mtime,
inode, ctime)."""

import hashlib
import json
import os
import shutil
import time

from mrl.artifacts import datasets
from mrl.artifacts.datasets import dataset_digest, dataset_files, describe_changes, file_digests
from mrl.artifacts.files import temp_name
from mrl.data.readers import list_image_folder


def tree(root):
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "a" / "x.jpg").write_bytes(b"x" * 10)
    (root / "train" / "b.parquet").write_bytes(b"b")
    temp_name(root / "train" / "b.parquet").write_bytes(b"half")  # a writer's temporary file: no reader opens it
    return root / "train"


def test_every_file_counts_by_name_size_and_content(tmp_path):
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


def settle(monkeypatch, *files):
    """Files old enough to be cached: mtime far back, and past the (here shortened) window in which a file just
    changed is never cached (its ctime is now: utime sets it)."""
    monkeypatch.setattr(datasets, "RACY_NS", 50_000_000)
    for f in files:
        os.utime(f, ns=(10**18, 10**18))
    time.sleep(0.1)


def test_the_cache_keeps_a_files_digest_until_its_size_or_mtime_moves(tmp_path, monkeypatch):
    data, cache = tree(tmp_path), tmp_path / "cache" / "digests.json"
    settle(monkeypatch, data / "a" / "x.jpg", data / "b.parquet")
    first = file_digests(data, cache)
    assert len(json.loads(cache.read_text())) == 2
    entry = json.loads(cache.read_text())
    key = str((data / "b.parquet").resolve())
    entry[key][-1] = "cached"
    cache.write_text(json.dumps(entry))
    assert file_digests(data, cache)["b.parquet"] == [1, "cached"]  # (path, size, mtime) unchanged: not reread
    (data / "b.parquet").write_bytes(b"c")  # mtime moves: read again
    assert file_digests(data, cache)["b.parquet"] == [1, hashlib.sha256(b"c").hexdigest()] != first["b.parquet"]


def test_the_files_are_those_the_image_folder_reader_opens_through_links_and_dot_files(tmp_path):
    """list_image_folder follows a symlinked class directory and reads a dot-file with an image suffix: the digest
    must cover both, or data training reads could change unseen. A link back up (a loop) is not followed twice."""
    elsewhere = tmp_path / "elsewhere" / "cats"
    elsewhere.mkdir(parents=True)
    (elsewhere / "c1.png").write_bytes(b"cat")
    split = tmp_path / "data" / "train"
    (split / "dogs").mkdir(parents=True)
    (split / "dogs" / "d1.png").write_bytes(b"dog")
    (split / "dogs" / ".d0.png").write_bytes(b"hidden dog")
    (split / "cats").symlink_to(elsewhere, target_is_directory=True)
    (split / "dogs" / "up").symlink_to(split, target_is_directory=True)  # a loop
    paths, _ = list_image_folder(split)
    read = sorted(os.path.relpath(p, split) for p in paths)
    assert read == ["cats/c1.png", "dogs/.d0.png", "dogs/d1.png"]
    assert [name for name, _ in dataset_files(split)] == read
    first = file_digests(split)
    (elsewhere / "c1.png").write_bytes(b"CAT")  # through the link
    assert describe_changes(first, file_digests(split)) == "1 changed (cats/c1.png)"
    (elsewhere / "c1.png").write_bytes(b"cat")
    (split / "dogs" / ".d0.png").write_bytes(b"HIDDEN DOG")
    now = file_digests(split)
    assert describe_changes(first, now) == "1 changed (dogs/.d0.png)" and dataset_digest(now) != dataset_digest(first)


def test_a_file_replaced_with_its_size_and_mtime_kept_is_read_again(tmp_path, monkeypatch):
    """`cp -p` (rewritten in place, mtime restored: same inode, new ctime) and `rsync -a` (a new file renamed over
    it, mtime restored: new inode) leave (path, size, mtime) as they were; the cache must not answer for them."""
    data, cache = tree(tmp_path), tmp_path / "cache" / "digests.json"
    parquet, image = data / "b.parquet", data / "a" / "x.jpg"
    settle(monkeypatch, image, parquet)
    file_digests(data, cache)
    assert len(json.loads(cache.read_text())) == 2
    stamp = os.stat(image).st_mtime_ns
    image.write_bytes(b"y" * 10)  # cp -p: the same inode rewritten, its times copied from the source
    os.utime(image, ns=(stamp, stamp))
    assert file_digests(data, cache)["a/x.jpg"] == [10, hashlib.sha256(b"y" * 10).hexdigest()]
    stamp = os.stat(parquet).st_mtime_ns
    new = tmp_path / "incoming.parquet"
    new.write_bytes(b"c")
    os.utime(new, ns=(stamp, stamp))
    shutil.move(new, parquet)  # rsync -a: a new file renamed into place
    assert file_digests(data, cache)["b.parquet"] == [1, hashlib.sha256(b"c").hexdigest()]
