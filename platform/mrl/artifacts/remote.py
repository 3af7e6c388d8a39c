"""Artifacts in object storage, read through a local copy.

Readers of an artifact (the index stage reading embeddings, evaluation, a service replica memory-mapping an index)
want local files: FAISS reads a file, numpy memory-maps one. `local_copy` gives them one for any location: a
local directory as it is; an `s3://` / `gs://` one copied into a cache directory on this node, only what its
manifest lists (an embed run's splits, an index's files, a sharded index's top-level manifest and the shards
asked for). A file already in the cache with the listed sha256 is not downloaded again (that copy is the one
the manifest vouches for, even if the bucket's object changed since: `mrl lineage` checks the bucket itself); the
caller's reader then checks every file against the manifest as it would on local disk, so a copy cut short or an
object changed before it was copied is caught there.

Writers (`publish`) build an artifact in a local directory and upload it, the manifest last: in object storage
the manifest's presence is what says the artifact is complete.

The cache is `$MRL_CACHE_DIR` or ~/.cache/mrl, one directory per artifact URI (a readable name and a hash of the
URI); files arrive under temporary names and are renamed into place, so replicas sharing a node may copy the same
artifact at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mrl import storage
from mrl.artifacts.files import replace_file, replace_with
from mrl.artifacts.manifest import MANIFEST, check_file_name, sha256

CACHE_ENV = "MRL_CACHE_DIR"


def artifact_location(path: str | Path) -> str:
    """Where an artifact named by a config is, for records and other nodes: a URI with its `latest` pointer
    followed, or an absolute local path with its symlinks (a local `latest`) resolved."""
    if storage.is_remote(path):
        return storage.resolve_latest(str(path))
    return str(Path(path).resolve())


def cache_root() -> Path:
    """Where copies of remote artifacts go on this node: $MRL_CACHE_DIR, else ~/.cache/mrl."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mrl")


def cache_dir_for(location: str) -> Path:
    """The cache directory of one remote artifact: <cache>/remote/<its name>-<hash of its URI>."""
    key = hashlib.sha256(storage.absolute(location).encode()).hexdigest()[:16]
    return cache_root() / "remote" / f"{storage.name(location)}-{key}"


def local_copy(location: str | Path, splits: Iterable[str] | None = None, shards: Iterable[int] | None = None
               ) -> Path:
    """A local directory holding the artifact at `location` (a `latest` pointer followed): the directory itself
    when it is local, else a copy in this node's cache of its manifest and the files the manifest lists.

    Args:
        splits: an embed run's splits to copy (None: every split its manifest lists).
        shards: a sharded index's shards to copy (None: every shard; () for the top-level manifest alone).

    Raises:
        FileNotFoundError: no manifest at `location`.
    """
    if not storage.is_remote(location):
        return Path(location)
    location = storage.resolve_latest(location)
    local = cache_dir_for(location)
    manifest = _copy_listed(location, local, splits)
    shard_list = (manifest.get("shards") or {}).get("list") or []
    for i in (range(len(shard_list)) if shards is None else shards):
        if 0 <= i < len(shard_list):  # an unknown shard is refused by the reader, which names the listing
            where = check_file_name(shard_list[i]["path"], location)
            _copy_listed(storage.join(location, where), local / where, None)
    return local


def _copy_listed(location: str, local: Path, splits: Iterable[str] | None) -> dict[str, Any]:
    """Copy the artifact at `location` into the local directory `local`: every file its manifest lists (of an
    embed run, the files of `splits` only; None: all) that is not there with the listed sha256 already, each
    written aside and renamed into place (`replace_with`), then the manifest. Returns the manifest."""
    source = storage.join(location, MANIFEST)
    if not storage.is_file(source):
        raise FileNotFoundError(f"{source} does not exist: {location} is not an artifact written by the platform "
                                "(or it is still being written: its manifest is uploaded last)")
    data = storage.read_bytes(source)
    manifest = json.loads(data)
    for rel, digest in _listed(manifest, splits, location):
        target = local / rel
        if target.is_file() and sha256(target) == digest:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_with(target, lambda tmp, rel=rel: storage.copy_file(storage.join(location, *rel.split("/")), tmp))
    local.mkdir(parents=True, exist_ok=True)
    replace_file(local / MANIFEST, data)
    return manifest


def _listed(manifest: dict[str, Any], splits: Iterable[str] | None, where: str) -> list[tuple[str, str]]:
    """(relative path, sha256) of the files a manifest lists: an index's checksums, an embed run's split files;
    every name a plain file name (`check_file_name`), so nothing is written outside the copy."""
    found = [(check_file_name(name, where), digest) for name, digest in (manifest.get("checksums") or {}).items()]
    wanted = None if splits is None else set(splits)
    for split, listing in (manifest.get("files") or {}).items():
        if wanted is None or split in wanted:
            folder = check_file_name(split, where)
            found += [(f"{folder}/{check_file_name(name, where)}", digest) for name, digest in listing.items()]
    return found


def publish(local: Path, target: str) -> None:
    """Upload the finished artifact directory `local` to `target` (object storage), every manifest.json after
    the files it lists, the top-level one last."""
    rels = [rel for rel, _, _ in storage.walk(local)]
    manifests = sorted((r for r in rels if r.rsplit("/", 1)[-1] == MANIFEST), key=lambda r: (-r.count("/"), r))
    storage.upload_dir(local, target, last=manifests)
