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
from mrl.artifacts.manifest import MANIFEST, sha256

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
    manifest = _fetch_manifest(location, local)
    for rel, digest in _listed(manifest, splits):
        _fetch(storage.join(location, *rel.split("/")), local / rel, digest)
    shard_list = (manifest.get("shards") or {}).get("list") or []
    for i in (range(len(shard_list)) if shards is None else shards):
        if 0 <= i < len(shard_list):  # an unknown shard is refused by the reader, which names the listing
            local_copy_into(storage.join(location, shard_list[i]["path"]), local / shard_list[i]["path"])
    return local


def local_copy_into(location: str, local: Path) -> Path:
    """Copy the (unsharded) artifact at `location` into the local directory `local`: its manifest and listed files."""
    manifest = _fetch_manifest(location, local)
    for rel, digest in _listed(manifest, None):
        _fetch(storage.join(location, *rel.split("/")), local / rel, digest)
    return local


def _fetch_manifest(location: str, local: Path) -> dict[str, Any]:
    source = storage.join(location, MANIFEST)
    if not storage.is_file(source):
        raise FileNotFoundError(f"{source} does not exist: {location} is not an artifact written by the platform "
                                "(or it is still being written: its manifest is uploaded last)")
    data = storage.read_bytes(source)
    local.mkdir(parents=True, exist_ok=True)
    storage.write_bytes(local / MANIFEST, data)
    return json.loads(data)


def _listed(manifest: dict[str, Any], splits: Iterable[str] | None) -> list[tuple[str, str]]:
    """(relative path, sha256) of the files a manifest lists: an index's checksums, an embed run's split files."""
    found = [(name, digest) for name, digest in (manifest.get("checksums") or {}).items()]
    wanted = None if splits is None else set(splits)
    for split, listing in (manifest.get("files") or {}).items():
        if wanted is None or split in wanted:
            found += [(f"{split}/{name}", digest) for name, digest in listing.items()]
    for rel, _ in found:
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"a manifest lists {rel!r}: not a file inside the artifact; refusing to copy it")
    return found


def _fetch(source: str, target: Path, digest: str) -> None:
    """Download `source` to `target` unless a copy with sha256 `digest` is there (a temporary name, renamed)."""
    if target.is_file() and sha256(target) == digest:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{os.urandom(8).hex()}")
    try:
        storage.copy_file(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def publish(local: Path, target: str) -> None:
    """Upload the finished artifact directory `local` to `target` (object storage), every manifest.json after
    the files it lists, the top-level one last."""
    rels = [rel for rel, _, _ in storage.walk(local)]
    manifests = sorted((r for r in rels if r.rsplit("/", 1)[-1] == MANIFEST), key=lambda r: (-r.count("/"), r))
    storage.upload_dir(local, target, last=manifests)
