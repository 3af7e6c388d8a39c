"""Where files live: local paths and object-storage URIs, through pyarrow's filesystems.

A location is a local path (`outputs/index`, `/mnt/data`), a `file://` URI, or an object-storage URI:
`s3://bucket/prefix` (S3 and S3-compatible stores) or `gs://bucket/prefix` (Google Cloud Storage). Credentials
and endpoints come from the environment or the cloud's default chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or pod role; AWS_ENDPOINT_URL for an S3-compatible server;
Google's application default credentials), never from a config file: a URI carrying a user or a password is
refused (`uri_problem`).

What object storage does not have, and what the platform does instead:
- no rename: a file is written by one PUT (`write_bytes`, `open_output`), which appears whole or not at all,
  so a file needs no temporary name; a directory is "complete" when the manifest written last is there;
- no exclusive create and no locks: two writers of one key both succeed, the later one wins (callers that need
  one writer hold a lock on local disk and say so);
- no symlinks: a `latest` pointer is a small object holding the name it points at (`point_latest`,
  `resolve_latest`).

Every function takes either kind of location; local paths keep their local behaviour (symlinks followed).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

REMOTE_SCHEMES = ("s3", "gs", "gcs")
LATEST = "latest"
CHUNK = 8 << 20  # bytes per read when streaming a file (hashing, copying)


def scheme(location: str | Path) -> str:
    """The URI scheme of `location` ("" for a plain local path)."""
    text = str(location)
    return urlsplit(text).scheme.lower() if "://" in text else ""


def is_remote(location: str | Path) -> bool:
    """Whether `location` is in object storage (s3://, gs://), not on a local or mounted filesystem."""
    return scheme(location) in REMOTE_SCHEMES


def uri_problem(location: str) -> str | None:
    """What is wrong with `location` as a place to read or write, or None: an unknown scheme, a URI without a
    bucket, or credentials written into the URI."""
    kind = scheme(location)
    if not kind:
        return None if str(location).strip() else "is empty"
    if kind not in (*REMOTE_SCHEMES, "file"):
        return (f"has scheme {kind!r}; accepted: a local path, file://, " +
                ", ".join(f"{s}://" for s in REMOTE_SCHEMES))
    parts = urlsplit(str(location))
    if kind != "file" and not parts.hostname:
        return f"names no bucket (expected {kind}://<bucket>/<prefix>)"
    if parts.username or parts.password:
        return ("carries credentials; give them in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or the cloud's default chain), never in a config file")
    if parts.query:
        return "has query options; set endpoints and regions in the environment (AWS_ENDPOINT_URL, AWS_REGION)"
    return None


@functools.lru_cache(maxsize=32)
def _remote_filesystem(kind: str, bucket: str, endpoint: str | None):
    """One pyarrow filesystem per (scheme, bucket, endpoint) in a process (opening one asks the bucket's region)."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(f"{kind}://{bucket}")[0]


def resolve(location: str | Path):
    """(pyarrow filesystem, path inside it) of `location`: a bucket-qualified key for a URI, an absolute path
    for a local one."""
    import pyarrow.fs as pafs

    kind = scheme(location)
    if kind in REMOTE_SCHEMES:
        parts = urlsplit(str(location))
        fs = _remote_filesystem(kind, parts.hostname, os.environ.get("AWS_ENDPOINT_URL"))
        return fs, f"{parts.hostname}{parts.path}".rstrip("/")
    path = urlsplit(str(location)).path if kind == "file" else str(location)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def absolute(location: str | Path) -> str:
    """`location` for another process or node: a URI as it is (no trailing /), a local path made absolute."""
    if is_remote(location):
        return str(location).rstrip("/")
    return str(Path(resolve(location)[1]))


def join(base: str | Path, *parts: str) -> str:
    """`base`/`parts`: URIs joined with "/", local paths as `Path` joins them."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(str(base), *parts))


def name(location: str | Path) -> str:
    """The last part of `location`."""
    return str(location).rstrip("/").rsplit("/", 1)[-1] if is_remote(location) else Path(location).name


def parent(location: str | Path) -> str:
    """`location` less its last part."""
    return str(location).rstrip("/").rsplit("/", 1)[0] if is_remote(location) else str(Path(location).parent)


def _info(location: str | Path):
    fs, path = resolve(location)
    return fs.get_file_info(path)


def is_file(location: str | Path) -> bool:
    import pyarrow.fs as pafs

    return _info(location).type == pafs.FileType.File


def is_dir(location: str | Path) -> bool:
    """A directory, or in object storage a prefix holding at least one object."""
    import pyarrow.fs as pafs

    return _info(location).type == pafs.FileType.Directory


def size_and_mtime(location: str | Path) -> tuple[int, int]:
    """(size in bytes, last-modified time in ns) of a file."""
    info = _info(location)
    return int(info.size), int(info.mtime_ns or 0)


def exists(location: str | Path) -> bool:
    import pyarrow.fs as pafs

    return _info(location).type != pafs.FileType.NotFound


def entries(location: str | Path) -> list[tuple[str, bool]]:
    """(name, is a directory) of what is directly under directory `location`, sorted by name."""
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted((info.base_name, info.type == pafs.FileType.Directory) for info in found
                  if info.type != pafs.FileType.NotFound)


def files(location: str | Path, suffixes: Iterable[str] | None = None) -> list[str]:
    """The files directly under directory `location` (whose names end in one of `suffixes`, any case), as
    locations, sorted by name."""
    ends = tuple(s.lower() for s in suffixes) if suffixes is not None else None
    return [join(location, n) for n, is_directory in entries(location)
            if not is_directory and (ends is None or n.lower().endswith(ends))]


def walk(location: str | Path) -> list[tuple[str, int, int]]:
    """(path relative to `location`, size, mtime in ns) of every file under `location`, recursively, sorted."""
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted((info.path[len(path):].lstrip("/"), int(info.size), int(info.mtime_ns or 0)) for info in found
                  if info.type == pafs.FileType.File)


def open_input(location: str | Path):
    """A random-access file of `location` (what `pyarrow.parquet.ParquetFile` and PIL read)."""
    fs, path = resolve(location)
    return fs.open_input_file(path)


def read_bytes(location: str | Path) -> bytes:
    with open_input(location) as f:
        return f.read()


def open_output(location: str | Path):
    """A stream writing `location`. In object storage the object appears when the stream closes, whole; a local
    file is written in place (callers that need atomic local files write a temporary name and rename)."""
    fs, path = resolve(location)
    if not is_remote(location):
        fs.create_dir(os.path.dirname(path), recursive=True)
    return fs.open_output_stream(path)


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write `location` whole: one PUT in object storage; locally a temporary sibling renamed into place."""
    if is_remote(location):
        with open_output(location) as f:
            f.write(data)
        return
    path = Path(resolve(location)[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(8).hex()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256(location: str | Path) -> str:
    """The sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open_input(location) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_file(source: str | Path, target: str | Path) -> None:
    """Copy one file between any two locations (a download, an upload, or a copy), streamed."""
    with open_input(source) as src, open_output(target) as out:
        while chunk := src.read(CHUNK):
            out.write(chunk)


def upload_dir(local: str | Path, target: str, last: Iterable[str] = ("manifest.json",)) -> list[str]:
    """Copy every file under the local directory `local` to `target` (keeping relative paths), the files named
    in `last` (relative paths) after all others and in that order, so a reader that waits for them finds the rest
    there. Returns the relative paths copied."""
    later = [rel for rel in last]
    names = [rel for rel, _, _ in walk(local)]
    for rel in [r for r in names if r not in later] + [r for r in later if r in names]:
        copy_file(Path(local, rel), join(target, *rel.split("/")))
    return names


def delete_dir(location: str | Path) -> None:
    """Remove a directory (or every object under a prefix); nothing there is fine."""
    fs, path = resolve(location)
    if exists(location):
        fs.delete_dir(path)


def point_latest(target: str) -> None:
    """Object storage: make <parent>/latest name `target` (an object holding its name). Call it last, once the
    artifact is complete and recorded. Local directories use a symlink (`mrl.artifacts.manifest.point_latest`)."""
    write_bytes(join(parent(target), LATEST), name(target).encode())


def resolve_latest(location: str | Path) -> str:
    """`location` with a `latest` pointer in object storage replaced by the directory it names; local paths and
    other URIs unchanged (a local `latest` is a symlink the filesystem follows)."""
    location = str(location)
    if is_remote(location) and name(location) == LATEST and is_file(location):
        pointed = read_bytes(location).decode().strip()
        if not pointed or "/" in pointed:
            raise ValueError(f"{location} does not name a sibling directory (holds {pointed!r})")
        return join(parent(location), pointed)
    return location
