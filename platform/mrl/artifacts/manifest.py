"""Manifests: the JSON file every stage's output directory carries (what produced it, from what, in which
format), checksums, and the `latest` link beside each run's directory.

A manifest vouches for the files a reader opens: each is listed by a plain file name (no path separator, not
`.` or `..`, not absolute) with its sha256, and `verify_files` refuses a file the reader opens that is not listed,
missing, or changed. Manifests are written atomically (`mrl.artifacts.files.replace_file`; in object storage one
PUT). Directories may be local or object-storage URIs (`mrl.storage`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from mrl import storage
from mrl.artifacts.files import fsync_path, replace_file, temp_name

MANIFEST = "manifest.json"
# The artifact layouts this platform writes and reads; a change to a layout bumps its version.
# embed 2: the manifest lists every Parquet file of every split with its sha256 ("files"). Version 1 directories
# hold what 2 holds but "files": the service's item reader and `mrl lineage` still read them (files unverified);
# readers of the Parquet files refuse them.
FORMAT_VERSIONS = {"embed": 2, "index": 1}


class ManifestError(ValueError):
    """A directory's manifest is of another stage or format version than the reader expects, or does not vouch
    for a file the reader opens."""


def check_file_name(name: Any, where: str | Path) -> str:
    """`name` when it is a plain file name a manifest may list; ManifestError naming it otherwise."""
    if (not isinstance(name, str) or name in ("", ".", "..", MANIFEST) or "/" in name or "\\" in name
            or "\0" in name or os.path.isabs(name)):
        raise ManifestError(f"the manifest of {where} lists the file {name!r}: a manifest lists plain file names "
                            "of its own directory (no path separator, '.', '..' or absolute path); refusing it")
    return name


def _listings(manifest: dict[str, Any]) -> list[Mapping[str, Any]]:
    """Every name -> sha256 listing in a manifest: index `checksums`, embed `files` (one per split)."""
    found = [manifest.get("checksums") or {}]
    found += list((manifest.get("files") or {}).values())
    return found


def _check_listing(manifest: dict[str, Any], where: str | Path) -> None:
    for split in manifest.get("files") or {}:
        check_file_name(split, where)
    for listing in _listings(manifest):
        for name in listing:
            check_file_name(name, where)


def read_manifest(path: str | Path, stage: str | None = None, versions: Collection[int] | None = None
                  ) -> dict[str, Any]:
    """The manifest.json of a stage's output directory.

    Args:
        path: the directory.
        stage: when given, refuse a manifest of another stage ("embed", "index") or of a format version this
            platform does not read (manifests written before the field existed count as version 1).
        versions: the format versions the caller reads (None: the stage's current one). A reader of what every
            version records (an embed run's data config, say) may take older ones too: `format_version(manifest)`
            tells which it got.

    Raises:
        FileNotFoundError: no manifest there.
        ManifestError: wrong stage or format version, or a listed name that is not a plain file name.
    """
    file = storage.join(path, MANIFEST)
    if not storage.is_file(file):
        raise FileNotFoundError(f"{file} does not exist: {path} is not a directory written by the platform")
    manifest = json.loads(storage.read_bytes(file))
    if stage is not None:
        if manifest.get("stage") != stage:
            raise ManifestError(f"{path} holds a {manifest.get('stage')!r} manifest, not an {stage!r} one")
        version, accepted = format_version(manifest), sorted(versions or (FORMAT_VERSIONS[stage],))
        if version not in accepted:
            raise ManifestError(f"{path} is a format version {version} {stage} artifact; this platform reads "
                                f"version {' or '.join(map(str, accepted))}: rerun the {stage} stage to rewrite it")
    _check_listing(manifest, path)
    return manifest


def format_version(manifest: dict[str, Any]) -> int:
    """A manifest's format version (1 for manifests written before the field existed)."""
    return manifest.get("format_version", 1)


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` (with its stage's current format version) as <path>/manifest.json, atomically."""
    _check_listing(manifest, path)
    stage = manifest["stage"]
    data = json.dumps({"format_version": FORMAT_VERSIONS[stage], **manifest}, indent=2)
    if storage.is_remote(path):
        storage.write_bytes(storage.join(path, MANIFEST), data.encode())
    else:
        replace_file(Path(path) / MANIFEST, data.encode())


def verify_files(path: str | Path, listing: Mapping[str, str], opened: Iterable[str], verify: bool = True) -> None:
    """Check the files a reader opens in directory `path` against the manifest's `listing` (name -> sha256).

    Args:
        opened: the names the reader opens: each must be listed (the listing vouches for nothing else).
        verify: also check every listed file exists and matches its sha256.

    Raises:
        ManifestError: a name not plain, an opened file the manifest does not list, a listed file missing or
            not matching its checksum; the message names the file.
    """
    for name in listing:
        check_file_name(name, path)
    unlisted = sorted(set(opened) - set(listing))
    if unlisted:
        raise ManifestError(f"{storage.join(path, unlisted[0])} is not listed in the manifest of {path} "
                            f"({len(unlisted)} unlisted file(s) the reader opens: {unlisted[:5]}); the manifest "
                            "vouches only for what it lists: rewrite the artifact")
    if not verify:
        return
    for name, digest in listing.items():
        file = storage.join(path, name)
        if not storage.is_file(file):
            raise ManifestError(f"{file} listed in the manifest is missing")
        if storage.sha256(file) != digest:
            raise ManifestError(f"{file} does not match its manifest checksum (modified or corrupt); rewrite the "
                                "artifact")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def point_latest(target: str | Path) -> None:
    """Make <parent>/latest a symlink to `target` (atomic replace; in object storage an object naming it). Call it
    last: once the artifact is complete and recorded, so `latest` never names an output whose run failed."""
    if storage.is_remote(target):
        storage.point_latest(str(target))
        return
    target = Path(target)
    link = target.parent / "latest"
    tmp = temp_name(link)
    tmp.symlink_to(target.name)
    tmp.replace(link)
    fsync_path(target.parent)
