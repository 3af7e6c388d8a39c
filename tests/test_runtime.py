"""What a run prints (`mrl.runtime.captured_output`), in fresh interpreters so their stdout and stderr are real
file descriptors: quiet mode keeps the platform's lines and actionable warnings on the terminal and sends the rest
(Python logging, warnings, C++-style writes to fd 2, known-harmless lines) to the run's log; debug changes
nothing; a failed run names its log."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = """
import logging, os, sys, warnings
from mrl.runtime import captured_output

logging.basicConfig(level=logging.INFO)
with captured_output("unit", sys.argv[1], sys.argv[2]) as path:
    print("[unit] a platform line", flush=True)
    print("| 8 | 90.00 |", flush=True)
    print("(raylet) Task ServeController.graceful_shutdown failed. There are infinite retries remaining", flush=True)
    print("(raylet) WARNING: 8 PYTHON worker processes have been started on node: 4999 with address: 192.0.2.2, "
          "which is 4x the maximum expected startup concurrency (2).", flush=True)
    os.write(2, b"[2026-12-04 20:41:07,320 E 1 2] core_worker.cc:2465: Actor with class name: X has constructor\\n")
    logging.getLogger("ray.data").info("Dataset execution finished in 0.1 seconds")
    logging.getLogger("mlflow.pyfunc").warning("Failed to infer model signature: no hints")
    logging.getLogger("ray").warning("The cluster is starved of CPUs")
    warnings.warn("a library's UserWarning")
    with captured_output("inner", sys.argv[1], "info") as inner:
        assert inner == path  # the outer run decided; no second log, no second banner
    if sys.argv[3] == "fail":
        raise RuntimeError("the stage broke")
print(f"after {path}", flush=True)
"""
PLATFORM = ["[unit] a platform line", "| 8 | 90.00 |"]
HIDDEN = ["graceful_shutdown failed", "PYTHON worker processes have been started", "core_worker.cc:2465", "Dataset execution finished",
          "Failed to infer model signature", "a library's UserWarning"]


def run_script(tmp_path: Path, level: str, fail: str = "ok") -> tuple[subprocess.CompletedProcess, list[str]]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), level, fail], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    return done, done.stdout.splitlines()


def test_quiet_mode_prints_the_platforms_lines_and_actionable_warnings_and_logs_the_rest(tmp_path):
    done, lines = run_script(tmp_path, "info")
    assert done.returncode == 0, done.stdout
    log = next((tmp_path / "logs").glob("unit-*.log"))
    assert lines == [f"[mrl] Ray's, MLflow's and the workers' output: {log} (log_level=debug or --verbose prints "
                     "it here)", *PLATFORM, "WARNING:ray:The cluster is starved of CPUs", f"after {log}"]
    logged = log.read_text()
    for text in [*PLATFORM, *HIDDEN, "The cluster is starved of CPUs"]:
        assert text in logged, text
    assert list((tmp_path / "logs").iterdir()) == [log]


def test_debug_prints_everything_and_writes_no_log(tmp_path):
    done, lines = run_script(tmp_path, "debug")
    assert done.returncode == 0, done.stdout
    for text in [*PLATFORM, *HIDDEN, "The cluster is starved of CPUs", "after None"]:
        assert any(text in line for line in lines), text
    assert not (tmp_path / "logs").exists()


def test_a_failed_run_names_its_log_and_shows_the_traceback(tmp_path):
    done, lines = run_script(tmp_path, "info", "fail")
    assert done.returncode == 1
    log = next((tmp_path / "logs").glob("unit-*.log"))
    assert f"[mrl] unit failed; what Ray, MLflow and the workers printed is in {log}" in lines
    assert lines[-1] == "RuntimeError: the stage broke"  # the traceback reaches the terminal, not the log
    assert not any("core_worker.cc" in line for line in lines)


def test_an_unknown_log_level_is_refused():
    from mrl.runtime import captured_output

    with pytest.raises(ValueError, match=r"log_level 'loud' is not accepted; choose one of \['info', 'debug'\]"):
        with captured_output("unit", "/nonexistent", "loud"):
            pass


def test_quiet_mode_holds_where_sys_stderr_is_not_fd_2(tmp_path, capfd):
    """Under pytest (or in a notebook) sys.stderr is an object of its own, not fd 2: Python's stderr writes and the
    lines Ray relays as stderr still go through the run's pipe, to the log or, when actionable, the terminal."""
    from mrl.runtime import captured_output

    with captured_output("unit", tmp_path, "info") as path:
        print("[unit] kept", flush=True)
        print("a library's chatter", file=sys.stderr, flush=True)
        print("2026-12-04 20:40:51,891\tWARNING x.py:1 -- act on this", file=sys.stderr, flush=True)
    out, err = capfd.readouterr()
    assert out.splitlines()[1:] == ["[unit] kept"] and err.splitlines() == [
        "2026-12-04 20:40:51,891\tWARNING x.py:1 -- act on this"]
    assert "a library's chatter" in path.read_text()


def test_worker_lines_go_to_the_log_and_platform_lines_to_the_terminal_until_the_end(tmp_path, capfd):
    """The relay of Ray's worker lines: a worker's [stage] line prints as the driver's own, its other lines (a Serve
    replica's access log) go to the run's log, a warning reaches the terminal too, and Ray's printer is not called
    for a worker's lines while the capture holds (cluster events still go to it)."""
    from mrl.runtime import _Capture, _relay

    printed = []
    capture = _Capture(tmp_path / "run.log")
    try:
        relay = _relay(printed.append, capture._worker_lines)
        relay({"pid": 7, "actor_name": "ServeReplica:mrl:Retriever", "lines": [
            "[serve] kept", "INFO 2026 -- POST /search 200 50.3ms", "2026-12-05 10:51:35,268\tWARNING x.py:1 -- act"]})
        relay({"pid": "raylet", "lines": ["a cluster event"]})
    finally:
        capture.stop()
    out, err = capfd.readouterr()
    logged = (tmp_path / "run.log").read_text()
    assert "[serve] kept" in out and "POST /search" not in out + err and "WARNING x.py:1 -- act" in err
    assert "(ServeReplica:mrl:Retriever pid=7) INFO 2026 -- POST /search 200 50.3ms" in logged
    assert printed == [{"pid": "raylet", "lines": ["a cluster event"]}]


LOCAL_CLUSTER = """
import os
import ray
from ray._private.services import canonicalize_bootstrap_address_or_die
from mrl.runtime import ensure_ray
from mrl.stages.config import RayConfig

ensure_ray(RayConfig(num_cpus=1))

@ray.remote(num_cpus=0)
def seen_from_a_worker():
    return os.environ.get("RAY_ADDRESS"), canonicalize_bootstrap_address_or_die(None)

ours = ray.get_runtime_context().gcs_address
env, resolved = ray.get(seen_from_a_worker.remote())
assert env == ours and resolved == ours, (ours, env, resolved)
print("workers see", ours)
"""


@pytest.mark.slow
def test_workers_of_a_local_cluster_find_it_and_not_the_machines_last_ray_start():
    """Workers of the local cluster ensure_ray starts carry its address in RAY_ADDRESS, so Ray code in them that
    calls the State API without an address (Ray Train's PlacementGroupCleaner) asks this cluster, not the one
    /tmp/ray/ray_current_cluster names (another cluster on the machine, or a dead one)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-c", LOCAL_CLUSTER], capture_output=True, text=True, timeout=300, env=env,
                         cwd=REPO)
    assert run.returncode == 0 and "workers see" in run.stdout, run.stdout + run.stderr[-3000:]
