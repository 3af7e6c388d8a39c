"""Files that cannot be half-written or swapped under a reader.

- `temp_name`: a sibling name no other writer uses (host, pid and a uuid4), so writers on several nodes of a
  shared filesystem never meet on one temporary file.
- `replace_with` / `replace_file`: a file written at a temporary name (by any writer, or from bytes), fsynced, then
  `os.replace`d into place.
- `create_exclusive`: a file created only if absent (like O_CREAT|O_EXCL), appearing with its whole content.
- `publish_dir`: a directory written under a temporary sibling name, every file fsynced, renamed into place.
- `exclusive_lock`: a lock file (O_CREAT|O_EXCL) naming its holder (pid, host, start time), released at the end;
  a lock left by a process that is gone from this host is cleared (one clearer at a time, through a `.clearing`
  guard that expires after `CLEARING_STALE_S`), any other refuses with how to clear it; a lock whose holder
  could not be written is removed, never left empty.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
CLEARING_STALE_S = 60.0  # a lock's .clearing guard older than this was left by a clearer that died


class LockedError(RuntimeError):
    """Another run holds the lock."""


def temp_name(path: Path) -> Path:
    """A hidden sibling of `path` no other writer uses: .<name>.tmp-<host>-<pid>-<uuid4>."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}")


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:  # a fresh name: never another writer's file
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def replace_with(path: Path, write: Callable[[Path], None]) -> None:
    """Make `path` the file `write(tmp)` writes at a temporary name beside it (`temp_name`), fsynced, then
    `os.replace`d into place: readers see the old file or the new one, never a part of either. The temporary
    file is gone afterwards, whether `write` succeeded or not."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` as `path` atomically (`replace_with`), the directory entry synced too."""
    replace_with(path, lambda tmp: _write_synced(tmp, data))
    fsync_path(Path(path).parent)


def create_exclusive(path: Path, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists (then False): the exclusive create of O_CREAT|O_EXCL, done as
    a hard link of a complete, fsynced temporary file, so a crash never leaves `path` empty or half-written."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        _write_synced(tmp, data)
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)
    return True


def publish_dir(tmp: Path, final: Path) -> None:
    """Make the finished directory `tmp` appear as `final` at once: every file and directory under it is fsynced,
    then it is renamed (atomic on one filesystem) and the parent fsynced. `final` may be an empty directory.

    Raises:
        FileExistsError: `final` exists and is not empty (an artifact directory is written once); `tmp` is left
            where it was, for the caller to keep or remove.
    """
    for root, _, names in os.walk(tmp):
        for name in names:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))
    try:
        os.rename(tmp, final)
    except OSError as exc:
        if Path(final).is_dir() and any(Path(final).iterdir()):
            raise FileExistsError(f"{final} exists and is not empty: an artifact directory is written once; "
                                  f"{final} is left as it was and this output is not published there: write to "
                                  "a new directory") from exc
        raise
    fsync_path(Path(final).parent)


def remove_dir(path: Path) -> None:
    """Remove a temporary directory left by a failed write (missing is fine)."""
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(lock: Path, what: str) -> Iterator[dict[str, Any]]:
    """Hold `lock` (a file created with O_CREAT|O_EXCL, holding pid, host and start time) for the block.

    Args:
        lock: the lock file's path.
        what: what the lock guards, for messages ("embed run 'nightly'").

    Raises:
        LockedError: another live process holds it; the message names the file, the holder and how to clear a
            stale lock (one whose process is gone: on this host that is detected and the lock cleared).
    """
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "token": uuid.uuid4().hex, "what": what}
    _acquire(Path(lock), holder)
    try:
        yield holder
    finally:
        if _holder(Path(lock)).get("token") == holder["token"]:
            Path(lock).unlink(missing_ok=True)


def _acquire(lock: Path, holder: dict[str, Any]) -> None:
    lock.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _holder(lock)
            if attempt == 0 and _stale(owner) and _clear(lock, owner):
                log.warning("cleared the stale lock %s: pid %s of this host (%s) is gone", lock, owner["pid"],
                            owner["host"])
                continue
            raise LockedError(_locked_message(lock, owner, holder["what"])) from None
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(holder))
                f.flush()
                os.fsync(f.fileno())
            fsync_path(lock.parent)
        except BaseException:  # disk full, quota, a signal: an empty or torn lock would read as held forever
            Path(lock).unlink(missing_ok=True)
            raise
        return


def _holder(lock: Path) -> dict[str, Any]:
    """The lock's holder as written, or {} (gone, or being written this instant)."""
    try:
        found = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _stale(owner: dict[str, Any]) -> bool:
    """Whether the holder is a process of this host that no longer exists (elsewhere it cannot be told)."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _clear(lock: Path, owner: dict[str, Any]) -> bool:
    """Remove the stale lock, unless it changed; one clearer at a time (a guard file, O_EXCL)."""
    guard = lock.with_name(lock.name + ".clearing")
    fd = _open_guard(guard)
    if fd is None:
        return False
    try:
        if _holder(lock) != owner:
            return False
        lock.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)
        guard.unlink(missing_ok=True)


def _open_guard(guard: Path) -> int | None:
    """The clearing guard, created exclusively; None while another clearer holds it. A guard older than
    `CLEARING_STALE_S` was left by a clearer that died (clearing takes microseconds) and is removed first."""
    for attempt in range(2):
        try:
            return os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                age = time.time() - guard.stat().st_mtime
            except FileNotFoundError:  # its clearer just finished: try once more
                continue
            if attempt or age < CLEARING_STALE_S:
                return None
            log.warning("removed %s, left %.0f s ago by a lock clearer that stopped", guard, age)
            guard.unlink(missing_ok=True)
    return None


def _locked_message(lock: Path, owner: dict[str, Any], what: str) -> str:
    who = (f"pid {owner.get('pid')} on host {owner.get('host')} since {owner.get('started')}" if owner else
           "a process that is writing it now")
    return (f"{what} is already running: the lock {lock} is held by {who}. Wait for that run to finish, or use "
            f"another run_name. If that run is no longer running (killed, or its node lost), the lock is stale: "
            f"remove it (rm '{lock}') and run again")
