"""Every process's CPU time read from /proc (Linux), sampled by a process of its own, so a benchmark can say
where the machine's cores went between two moments (`mrlbench.train_bench`).

This module imports nothing heavy: the sampling process imports it, and must not take the cores it measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_snapshot() -> dict[int, tuple[float, str]]:
    """pid -> (CPU seconds so far, user + system; the command's first word) of every process (/proc, Linux)."""
    tick, snap = os.sysconf("SC_CLK_TCK"), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        snap[int(pid)] = ((int(fields[11]) + int(fields[12])) / tick, cmd)
    return snap


def sample_forever(path: str, interval: float) -> None:
    """Append a timed `cpu_snapshot` to `path` (JSON lines) every `interval` seconds, until killed."""
    with open(path, "a") as f:
        while True:
            f.write(json.dumps([time.time(), cpu_snapshot()]) + "\n")
            f.flush()
            time.sleep(interval)


class CpuShares:
    """Every process's CPU time, sampled every `interval` seconds by a process of its own (a thread here would
    take the GIL from the in-process loop it measures), so the share of the machine's cores a process got
    between two moments can be read afterwards."""

    def __init__(self, interval: float = 2.0):
        self.interval, self.samples = interval, []

    def __enter__(self) -> "CpuShares":
        with tempfile.NamedTemporaryFile(suffix=".jsonl", prefix="cpu-shares-", delete=False) as f:
            self._path = Path(f.name)
        code = ("from mrlbench.cpu_shares import sample_forever; "
                f"sample_forever({str(self._path)!r}, {self.interval})")
        self._proc = subprocess.Popen([sys.executable, "-c", code])
        return self

    def __exit__(self, *exc) -> None:
        self._proc.terminate()
        self._proc.wait()
        lines = self._path.read_text().splitlines()
        self._path.unlink()
        for line in lines:
            try:
                t, snap = json.loads(line)
            except ValueError:  # a line cut by the kill
                continue
            self.samples.append((t, {int(pid): tuple(v) for pid, v in snap.items()}))

    def between(self, t0: float, t1: float, trainer) -> dict[str, float]:
        """Shares of all cores from the last sample at or before t0 to the first at or after t1: {"trainer": the
        processes for which `trainer(pid, command)` holds, "others": every other process}."""
        before = [x for x in self.samples if x[0] <= t0] or self.samples[:1]
        after = [x for x in self.samples if x[0] >= t1] or self.samples[-1:]
        if not before or not after or after[0][0] <= before[-1][0]:
            return {}
        (ta, a), (tb, b) = before[-1], after[0]
        cores = (tb - ta) * (os.cpu_count() or 1)
        used = {"trainer": 0.0, "others": 0.0}
        for pid, (cpu, cmd) in b.items():
            if pid in a:
                used["trainer" if trainer(pid, cmd) else "others"] += cpu - a[pid][0]
        return {k: v / cores for k, v in used.items()}
