"""Manifests: the JSON file every stage's output directory carries (what produced it, from what, in which
format), checksums, and the `latest` link beside each run's directory."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
# The artifact layouts this platform writes and reads; a change to a layout bumps its version.
FORMAT_VERSIONS = {"embed": 1, "index": 1}


class ManifestError(ValueError):
    """A directory's manifest is of another stage or format version than the reader expects."""


def read_manifest(path: str | Path, stage: str | None = None) -> dict[str, Any]:
    """The manifest.json of a stage's output directory.

    Args:
        path: the directory.
        stage: when given, refuse a manifest of another stage ("embed", "index") or of a format version this
            platform does not read (manifests written before the field existed count as version 1).

    Raises:
        FileNotFoundError: no manifest there.
        ManifestError: wrong stage or format version.
    """
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist: {path} is not a directory written by the platform")
    manifest = json.loads(file.read_text())
    if stage is not None:
        if manifest.get("stage") != stage:
            raise ManifestError(f"{path} holds a {manifest.get('stage')!r} manifest, not an {stage!r} one")
        version = manifest.get("format_version", 1)
        if version != FORMAT_VERSIONS[stage]:
            raise ManifestError(f"{path} is a format version {version} {stage} artifact; this platform reads "
                                f"version {FORMAT_VERSIONS[stage]}: rerun the {stage} stage to rewrite it")
    return manifest


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` (with its stage's current format version) as <path>/manifest.json."""
    stage = manifest["stage"]
    (path / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSIONS[stage], **manifest}, indent=2))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def point_latest(target: Path) -> None:
    """Make <parent>/latest a symlink to `target` (atomic replace)."""
    link = target.parent / "latest"
    tmp = target.parent / f".latest-{time.time_ns()}"
    tmp.symlink_to(target.name)
    tmp.replace(link)
