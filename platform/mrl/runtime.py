"""Connecting to Ray (a new local cluster by default, or the cluster in RAY_ADDRESS / ray.address), what a run
prints (`captured_output`: the platform's own lines on the terminal, the rest of Ray's, MLflow's and the workers'
output in a log file), and the process's peak resident memory (what the embed stage and the benchmarks report)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOG_LEVELS = ("info", "debug")
"""A job's `log_level`: info prints the platform's own lines and actionable warnings (everything else goes to the
run's log file); debug prints everything Ray, MLflow and the workers print, as it comes."""

PLATFORM_LINE = re.compile(r"\[[a-z][a-z0-9_-]*\] ")
"""A line the platform prints: "[train] epoch 1/2 ...", "[embed] ...", "[mrl] ..." (its workers' lines too)."""
SEVERE_LINE = re.compile(r"(?:^|\s)(?:WARNING|ERROR|CRITICAL)\b|(?:^|\s)Warning: ")
"""A line a library logged at warning level or worse (Python logging's level names, the autoscaler's "Warning:")."""
HARMLESS = {
    "Token authentication is enabled for this Ray cluster": "Ray 2.59+ says so whenever a local cluster starts",
    "Progress bars disabled": "the stages turn Ray Data's bars off and print one line per unit or quarter epoch",
    "Failed to infer model signature": "the registered pyfunc is logged without a signature (it takes images or "
                                       "texts, by the model's modality); loading it does not need one",
    "Task ServeController.graceful_shutdown failed": "serve.shutdown() kills Serve's controller while it waits "
                                                     "on it; the retry Ray announces never comes",
    "PYTHON worker processes have been started on node": "the raylet counts workers against the cores; a local "
                                                         "cluster has more logical CPUs than cores on purpose "
                                                         "(ray.num_cpus), so Train, Data and Serve do not starve",
}
"""Warnings Ray and MLflow print on every run that ask nothing of the user: in quiet mode they go to the log alone."""

_owners: list[Path | None] = []  # the run that decided what this process prints (its log file; None: debug)
_capture: _Capture | None = None


def ensure_ray(ray_cfg) -> None:
    """Initialise Ray once per process.

    Under `ray job submit` RAY_ADDRESS is set and the job joins that cluster; otherwise a local cluster
    starts with `ray.num_cpus` logical CPUs (more than the cores, so Train workers cannot starve Ray Data
    or the Tune trial driver of CPU slots). Prints one line: which cluster, its dashboard, Ray's own logs.
    """
    import ray

    if ray.is_initialized():
        return
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        context = ray.init(address=address)
        what = f"joined the cluster at {address}"
    else:
        # address="local": always a new cluster, never one left by `ray start` on this machine. The
        # dashboard stays on: Ray Train's placement-group cleaner polls the State API it serves, and every
        # worker is told this cluster's address (see point_at_this_cluster).
        context = ray.init(address="local", num_cpus=ray_cfg.num_cpus,
                           runtime_env={"worker_process_setup_hook": "mrl.runtime.point_at_this_cluster"})
        what = f"started a local cluster with {ray_cfg.num_cpus} logical CPUs"
    if _capture is not None:
        _capture.relay_workers()
    dashboard = f", dashboard http://{context.dashboard_url}" if getattr(context, "dashboard_url", None) else ""
    session = getattr(context, "address_info", {}).get("session_dir")
    logs = f"; Ray's own logs: {Path(session) / 'logs'}" if session else ""
    print(f"[ray] {what}{dashboard}{logs}", flush=True)


def point_at_this_cluster() -> None:
    """Run in every worker of a local cluster as it starts: RAY_ADDRESS = this cluster's GCS.

    Ray code in workers that asks the State API without an address (Ray Train's PlacementGroupCleaner asks whether
    the Train controller is alive) otherwise takes the address `ray start` left in /tmp/ray/ray_current_cluster:
    another cluster on the machine, or a dead one. Asked about a controller it cannot find, the cleaner took it for
    dead and quit (seen here: "Failed to register placement group with cleaner"), or removed the live run's
    placement group; with a dead address it never cleaned up after a crashed controller."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """VmHWM: the process's peak resident memory since start or the last reset (Linux), else None."""
    return _status_bytes("VmHWM")


def rss_anon_bytes() -> int | None:
    """RssAnon: the process's anonymous resident memory now (Linux; not file pages such as memory-mapped files),
    else None."""
    return _status_bytes("RssAnon")


def _status_bytes(field: str) -> int | None:
    """A kB field of /proc/self/status in bytes (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def quiet_ray_data() -> None:
    """Ray Data without its per-operator progress bars and start-of-execution dumps (the stages print one line per
    unit or quarter epoch instead). The current DataContext: datasets created after this carry it to their
    executors."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


@contextlib.contextmanager
def captured_output(name: str, output_dir: str | Path, log_level: str = "info") -> Iterator[Path | None]:
    """What this process prints while a run `name` lasts. The outermost call decides (the CLI, the pipeline, a
    stage); calls inside it change nothing.

    log_level "info" (quiet): the terminal gets stdout (the stages' own lines) less known-harmless lines
    (`HARMLESS`), the platform's lines of Ray's workers, and lines of warning level or worse written to stderr
    that are not known to be harmless. Everything else written to stderr (Python logging of Ray, MLflow and the
    rest, warnings, C++ code such as Ray's core worker) and every other line a worker prints goes to
    <output_dir>/logs/<name>-<time>.log, whose path is printed once, at the start. "debug": nothing changes.

    Yields:
        The log file (None under debug).
    """
    global _capture
    if _owners:
        yield _owners[-1]
        return
    if log_level not in LOG_LEVELS:
        raise ValueError(f"log_level {log_level!r} is not accepted; choose one of {list(LOG_LEVELS)}")
    if log_level == "debug":
        _owners.append(None)
        try:
            yield None
        finally:
            _owners.pop()
        return
    path = Path(output_dir).resolve() / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[mrl] Ray's, MLflow's and the workers' output: {path} (log_level=debug or --verbose prints it here)",
          flush=True)
    _capture = _Capture(path)
    _owners.append(path)
    try:
        yield path
    except BaseException:
        _capture.say(f"[mrl] {name} failed; what Ray, MLflow and the workers printed is in {path}\n")
        raise
    finally:
        _owners.pop()
        _capture, capture = None, _capture
        capture.stop()


def harmless(line: str) -> bool:
    """Whether `line` is one of the warnings known to ask nothing of the user (`HARMLESS`)."""
    return any(text in line for text in HARMLESS)


def actionable(line: str) -> bool:
    """Whether a line written to stderr belongs on the terminal in quiet mode: warning level or worse, and not
    known to be harmless."""
    return bool(SEVERE_LINE.search(line)) and not harmless(line)


class _Stdout(io.TextIOBase):
    """sys.stdout in quiet mode: every line to the log, and to the terminal unless known to be harmless. Whoever
    kept a reference after the run (colorama does) still writes to the terminal."""

    def __init__(self, terminal, log):
        self.terminal, self.log, self.pending, self.lock = terminal, log, "", threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            *lines, self.pending = (self.pending + text).split("\n")
            for line in lines:
                self._emit(line + "\n")
        return len(text)

    def flush(self) -> None:
        with self.lock:
            if self.pending:  # a partial line someone wants shown now (a prompt, a progress dot)
                self._emit(self.pending)
                self.pending = ""
            self.terminal.flush()

    def _emit(self, text: str) -> None:
        with contextlib.suppress(ValueError):  # the log is closed once the run is over
            self.log.write(text.encode("utf-8", "replace"))
        if not harmless(text):
            self.terminal.write(text)
            self.terminal.flush()

    def fileno(self) -> int:
        return self.terminal.fileno()

    def isatty(self) -> bool:
        try:
            return self.terminal.isatty()
        except ValueError:  # a terminal closed since (a file a test printed into)
            return False

    @property
    def encoding(self) -> str:
        return self.terminal.encoding


class _Capture:
    """Quiet mode in this process (see `captured_output`) and how to undo it: fd 2 (and sys.stderr) goes into a pipe
    that a thread reads line by line (to the log, and to the terminal when `actionable`), sys.stdout becomes a
    `_Stdout`, and Ray's printer of worker lines becomes `_relay` while Ray is up."""

    def __init__(self, path: Path):
        self.path, self.log = path, open(path, "ab", buffering=0)
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved_stderr = os.dup(2)
        self.terminal = open(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.reader = threading.Thread(target=self._drain, args=(read,), name="mrl-stderr", daemon=True)
        self.reader.start()
        self.stdout, sys.stdout = sys.stdout, _Stdout(sys.stdout, self.log)
        # Python's own stderr writes into the pipe too, whatever sys.stderr was (pytest's capture, a notebook's
        # stream); never closed: a logging handler made during the run keeps writing to fd 2 after it
        self.stderr, sys.stderr = sys.stderr, open(2, "w", buffering=1, encoding="utf-8", errors="replace",
                                                   closefd=False)
        self.printer: Callable[[dict[str, Any]], None] | None = None
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            self.relay_workers()

    def say(self, text: str) -> None:
        """Write `text` to the terminal and the log."""
        self.terminal.write(text)
        self.terminal.flush()
        self.log.write(text.encode("utf-8", "replace"))

    def _drain(self, fd: int) -> None:
        pending = b""
        while chunk := os.read(fd, 1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._stderr_line(line + b"\n")
        if pending:
            self._stderr_line(pending)
        os.close(fd)

    def _stderr_line(self, raw: bytes) -> None:
        try:
            self.log.write(raw)
            text = raw.decode("utf-8", "replace")
            if actionable(text):
                self.terminal.write(text)
                self.terminal.flush()
        except (OSError, ValueError):  # closed: a child that inherited fd 2 wrote after the run ended
            pass

    def relay_workers(self) -> None:
        """Put `_relay` in place of Ray's printer of the lines workers forward to this driver (Ray 2.60's
        `ray._private.worker.global_worker_stdstream_dispatcher`, handler "ray_print_logs")."""
        from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher

        printer = dict(dispatcher.handlers).get("ray_print_logs")
        if printer is None or getattr(printer, "relays", None) is not None:
            return
        relay = _relay(printer, self._worker_lines)
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", relay)
        self.printer = relay

    def _worker_lines(self, batch: dict[str, Any], lines: list[str]) -> None:
        """A worker's lines that are not the platform's: to the log (the terminal too when actionable), named as
        Ray names them."""
        name = batch.get("actor_name") or batch.get("task_name") or "worker"
        for line in lines:
            self._stderr_line(f"({name} pid={batch.get('pid')}) {line}\n".encode("utf-8", "replace"))

    def stop(self) -> None:
        """Undo everything `__init__` did; the log keeps what the pipe still held. Ray's printer of worker lines
        comes back last: the reader may wait up to 2 s for the pipe (Ray's own processes, started from here,
        hold it), and lines workers send meanwhile (a Serve replica's access log of the run's last request) go
        to the log, not the terminal."""
        sys.stdout.flush()
        sys.stdout = self.stdout
        sys.stderr.flush()
        sys.stderr = self.stderr
        os.dup2(self.saved_stderr, 2)  # the pipe's last writer gone: the reader sees its end
        os.close(self.saved_stderr)
        self.reader.join(timeout=2)
        if self.printer is not None:
            from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher

            if dict(dispatcher.handlers).get("ray_print_logs") is self.printer:
                dispatcher.remove_handler("ray_print_logs")
                dispatcher.add_handler("ray_print_logs", self.printer.relays)
        if not self.reader.is_alive():  # else a child still holds the pipe: the reader keeps both files
            self.terminal.close()
            self.log.close()


def _relay(printer: Callable[[dict[str, Any]], None],
           sink: Callable[[dict[str, Any], list[str]], None] | None = None) -> Callable[[dict[str, Any]], None]:
    """Ray's printer of a batch of worker lines, filtered: the platform's lines go to stdout (the terminal) as they
    are, without Ray's worker prefix; every other line of a worker goes to `sink(batch, lines)` (the run's log, or
    the terminal when `actionable`), or without one prints as stderr. Cluster events (raylet, autoscaler) print as
    Ray would."""

    def relay(batch: dict[str, Any]) -> None:
        if not str(batch.get("pid", "")).isdigit():
            printer(batch)
            return
        lines = batch.get("lines") or []
        mine = [line for line in lines if PLATFORM_LINE.match(line)]
        rest = [line for line in lines if not PLATFORM_LINE.match(line)]
        if mine:  # as the driver's own lines: Ray's "(RayTrainWorker pid=...)" prefix says nothing to the reader
            sys.stdout.write("".join(line + "\n" for line in mine))
            sys.stdout.flush()
        if rest and sink is not None:
            sink(batch, rest)
        elif rest:
            printer({**batch, "lines": rest, "is_err": True})

    relay.relays = printer
    return relay
