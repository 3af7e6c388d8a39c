"""Files that cannot be half-written or swapped (mrl.artifacts.files): atomic replace, exclusive create,
whole-directory publish, unique temporary names and the run lock."""

import json
import os
import socket
import subprocess

import pytest

from mrl.artifacts.files import (LockedError, create_exclusive, exclusive_lock, publish_dir, replace_file,
                                 temp_name)


def test_replace_file_leaves_the_new_content_and_no_temporary_file(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    replace_file(target, b"new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_temporary_names_are_hidden_siblings_unique_per_call_and_name_the_host(tmp_path):
    names = {temp_name(tmp_path / "part-00001.parquet") for _ in range(100)}
    assert len(names) == 100
    name = next(iter(names)).name
    assert name.startswith(".part-00001.parquet.tmp-") and f"-{socket.gethostname()}-{os.getpid()}-" in name


def test_create_exclusive_creates_once_and_keeps_the_first_content(tmp_path):
    plan = tmp_path / "plan.json"
    assert create_exclusive(plan, b'{"a": 1}') and not create_exclusive(plan, b'{"a": 2}')
    assert plan.read_text() == '{"a": 1}' and [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_publish_dir_renames_a_finished_directory_and_never_writes_over_one(tmp_path):
    work = tmp_path / ".out.partial"
    (work / "train").mkdir(parents=True)
    (work / "train" / "part-0.parquet").write_bytes(b"rows")
    (tmp_path / "out").mkdir()  # an empty directory may be replaced
    publish_dir(work, tmp_path / "out")
    assert (tmp_path / "out" / "train" / "part-0.parquet").read_bytes() == b"rows" and not work.exists()
    (tmp_path / "again").mkdir()
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        publish_dir(tmp_path / "again", tmp_path / "out")


def test_a_held_lock_refuses_a_second_holder_naming_the_file_and_how_to_clear_it(tmp_path):
    lock = tmp_path / ".nightly.lock"
    with exclusive_lock(lock, "embed run 'nightly'") as holder:
        written = json.loads(lock.read_text())
        assert written["pid"] == os.getpid() and written["host"] == socket.gethostname() and written["started"]
        with pytest.raises(LockedError, match=(f"embed run 'nightly' is already running: the lock {lock} is held by "
                                                f"pid {os.getpid()} on host {socket.gethostname()}.*rm '{lock}'")):
            with exclusive_lock(lock, "embed run 'nightly'"):
                pass
        assert json.loads(lock.read_text())["token"] == holder["token"]  # the refused one left it alone
    assert not lock.exists()  # released at the end
    with exclusive_lock(lock, "embed run 'nightly'"):
        pass


def test_a_lock_of_a_process_gone_from_this_host_is_cleared_one_of_another_host_is_not(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock = tmp_path / ".x.lock"
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "then", "token": "t"}))
    with exclusive_lock(lock, "embed run 'x'") as holder:
        assert json.loads(lock.read_text())["token"] == holder["token"]
    lock.write_text(json.dumps({"pid": gone.pid, "host": "another-node", "started": "then", "token": "t"}))
    with pytest.raises(LockedError, match="held by pid .* on host another-node since then.*lock is stale: remove it"):
        with exclusive_lock(lock, "embed run 'x'"):
            pass
    assert json.loads(lock.read_text())["host"] == "another-node"
