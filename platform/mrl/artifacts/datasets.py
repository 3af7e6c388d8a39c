"""Content digests of a dataset's files: what the train stage records with its MLflow dataset input and what
`mrl lineage` re-checks, so a model's lineage tells when the data changed under it.

A dataset is a directory or one file. A directory's files are every regular file under it, recursively, as the
readers see them: symlinked directories are followed (an image folder's class may be a link; a link back to a
directory it is inside is not followed twice) and hidden names count (the readers open `.x.jpg` and
`.x.parquet`); only the platform's own temporary files (`.<name>.tmp-<host>-<pid>-<uuid>`, see
`mrl.artifacts.files.temp_name`), which no reader opens, are left out. Its digest is the sha256 of one line per
file, `<relative path>\t<size>\t<sha256 of its bytes>`, in path order: names, sizes and contents all count.
Each file's bytes are streamed once; with a cache file, a file's sha256 is kept under (path, size, mtime, inode,
ctime), so a large image folder is read again only where it changed, and a file replaced with the same size and
its mtime restored (`cp -p`, `rsync -a`) still has a new inode or ctime and is read again.

A dataset in object storage (`s3://`, `gs://`) is every object under its prefix (or the one object), streamed
once each; its cache key is (URI, size, last-modified time): an object is replaced, never changed in place, and
a replacement gets a new last-modified time.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from mrl import storage
from mrl.artifacts.files import replace_file
from mrl.artifacts.manifest import sha256

CACHE = Path("cache") / "file-digests.json"  # under a job's output_dir
RACY_NS = 2_000_000_000  # a file modified this recently is hashed again rather than cached (its mtime may not move)
TEMPORARY = re.compile(r"\..+\.tmp-.+-\d+-[0-9a-f]{32}")  # `mrl.artifacts.files.temp_name`: a writer's file


def digest_cache(output_dir: str | Path) -> Path:
    """The file-digest cache of jobs writing to `output_dir`."""
    return Path(output_dir).resolve() / CACHE


def dataset_files(location: str | Path) -> list[tuple[str, Path]]:
    """(relative name, path) of every file of the dataset at `location`, in name order.

    Raises:
        FileNotFoundError: nothing at `location`.
    """
    location = Path(location)
    if location.is_file():
        return [(location.name, location)]
    if not location.is_dir():
        raise FileNotFoundError(f"dataset {location} does not exist")
    return sorted(_walk(location, "", frozenset({_identity(location)})))


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()  # through links: the directory itself
    return st.st_dev, st.st_ino


def _walk(directory: Path, prefix: str, inside: frozenset[tuple[int, int]]) -> list[tuple[str, Path]]:
    """The files under `directory` (named `prefix` in the dataset), following symlinked directories except one
    that leads back into a directory of `inside` (the directories this one is in: a loop)."""
    found = []
    for entry in os.scandir(directory):
        path, name = Path(entry.path), prefix + entry.name
        if entry.is_dir():  # follows a link
            identity = _identity(path)
            if identity not in inside:
                found += _walk(path, name + "/", inside | {identity})
        elif entry.is_file() and not TEMPORARY.fullmatch(entry.name):
            found.append((name, path))
    return found


def file_digests(location: str | Path, cache: Path | None = None) -> dict[str, list[Any]]:
    """{relative name: [size, sha256]} of every file of the dataset at `location`.

    Args:
        cache: a JSON file keeping each file's sha256 under (absolute path, size, mtime_ns, inode, ctime_ns);
            None: hash every file (what `mrl lineage` does by default).
    """
    known = _load(cache)
    digests = _remote_digests if storage.is_remote(location) else _local_digests
    found, grown = digests(location, known)
    if cache is not None and grown:
        cache.parent.mkdir(parents=True, exist_ok=True)
        replace_file(cache, json.dumps(known).encode())
    return found


def _local_digests(location: str | Path, known: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], bool]:
    """`file_digests` of a dataset on disk, `known` (the cache) read and grown; (digests, grown)."""
    found, grown = {}, False
    now = time.time_ns()
    for name, path in dataset_files(location):
        st = path.stat()
        key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        hit = known.get(key)
        if isinstance(hit, list) and len(hit) == len(stamp) + 1 and hit[:-1] == stamp:
            digest = hit[-1]
        else:
            digest = sha256(path)
            if now - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
                known[key], grown = [*stamp, digest], True
        found[name] = [st.st_size, digest]
    return found, grown


def _remote_digests(location: str | Path, known: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], bool]:
    """`file_digests` of a dataset in object storage, `known` (the cache) read and grown; (digests, grown)."""
    location = str(location)
    if storage.is_file(location):
        listing = [(storage.name(location), location, *storage.size_and_mtime(location))]
    else:
        listing = [(rel, storage.join(location, rel), size, mtime) for rel, size, mtime in storage.walk(location)
                   if not TEMPORARY.fullmatch(rel.rsplit("/", 1)[-1])]
    if not listing:
        raise FileNotFoundError(f"dataset {location} does not exist")
    found, grown = {}, False
    for rel, uri, size, mtime in listing:
        stamp = [size, mtime]
        hit = known.get(uri)
        if isinstance(hit, list) and len(hit) == 3 and hit[:-1] == stamp and mtime:
            digest = hit[-1]
        else:
            digest = storage.sha256(uri)
            known[uri], grown = [*stamp, digest], True
        found[rel] = [size, digest]
    return found, grown


def _load(cache: Path | None) -> dict[str, list[Any]]:
    if cache is None:
        return {}
    try:
        found = json.loads(Path(cache).read_text())
    except (OSError, ValueError):  # absent or unreadable: every file is hashed
        return {}
    return found if isinstance(found, dict) else {}


def dataset_digest(files: dict[str, list[Any]]) -> str:
    """The dataset's sha256 over its files' names, sizes and sha256s (what `file_digests` returns)."""
    digest = hashlib.sha256()
    for name in sorted(files):
        size, sha = files[name]
        digest.update(f"{name}\t{size}\t{sha}\n".encode())
    return digest.hexdigest()


def describe_changes(recorded: dict[str, list[Any]], now: dict[str, list[Any]]) -> str:
    """What differs between two `file_digests` results, naming up to three files of each kind."""
    kinds = {"changed": [n for n in recorded if n in now and list(recorded[n]) != list(now[n])],
             "missing": [n for n in recorded if n not in now], "new": [n for n in now if n not in recorded]}
    parts = [f"{len(names)} {kind} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
             for kind, names in kinds.items() if names]
    return "; ".join(parts) or "the same files"
