"""Files that cannot be half-written or swapped (mrl.artifacts.files): atomic replace, exclusive create,
whole-directory publish, unique temporary names and the run lock."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mrl.artifacts.files import LockedError, create_exclusive, exclusive_lock, publish_dir, replace_file, temp_name


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


def test_a_refused_publish_names_what_is_kept_and_leaves_the_work_directory_to_its_caller(tmp_path):
    """The refusal must be true for every caller: write_index removes its work directory afterwards, so the
    message may not send the user there; it says the existing directory is kept and this output not published."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept.txt").write_text("an earlier index")
    (tmp_path / ".out.partial").mkdir()
    with pytest.raises(FileExistsError, match=f"{tmp_path / 'out'} is left as it was and this output is not "
                                              "published there") as err:
        publish_dir(tmp_path / ".out.partial", tmp_path / "out")
    assert ".out.partial" not in str(err.value) and (tmp_path / ".out.partial").is_dir()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["kept.txt"]


def test_a_lock_whose_holder_cannot_be_written_is_removed_not_left_empty(tmp_path):
    """The disk fills between the exclusive create and the holder's write (here: a file-size limit of 8 bytes,
    in a process of its own): the lock must not stay behind, empty or torn, reading as held forever."""
    lock = tmp_path / ".x.lock"
    script = ("import resource, signal, sys\n"
              "from mrl.artifacts.files import exclusive_lock\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (8, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
              "try:\n"
              f"    with exclusive_lock(sys.argv[1], 'embed run x'):\n"
              "        sys.exit(3)\n"
              "except OSError as exc:\n"
              "    print(type(exc).__name__, exc.errno)\n")
    done = subprocess.run([sys.executable, "-c", script, str(lock)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "OSError 27" in done.stdout, done.stdout + done.stderr  # EFBIG
    assert not lock.exists()
    with exclusive_lock(lock, "embed run 'x'"):
        pass


def test_a_clearing_guard_left_by_a_dead_clearer_expires(tmp_path):
    """A clearer that died between creating `.lock.clearing` and removing it must not disable stale-lock clearing
    forever: a guard an hour old is removed (CLEARING_STALE_S: a minute); a fresh one (a clearer at work) still
    defers."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock, guard = tmp_path / ".x.lock", tmp_path / ".x.lock.clearing"
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "then", "token": "t"}))
    guard.touch()
    with pytest.raises(LockedError, match="held by pid"):  # a clearer may be at work: leave it to it
        with exclusive_lock(lock, "embed run 'x'"):
            pass
    old = time.time() - 3600
    os.utime(guard, (old, old))
    with exclusive_lock(lock, "embed run 'x'") as holder:
        assert json.loads(lock.read_text())["token"] == holder["token"]
    assert not lock.exists() and not guard.exists()
