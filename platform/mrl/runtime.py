"""Connecting to Ray (a new local cluster by default, or the cluster in RAY_ADDRESS / ray.address), and the
process's peak resident memory (what the embed stage and the benchmarks report)."""

from __future__ import annotations

import os
from pathlib import Path


def ensure_ray(ray_cfg) -> None:
    """Initialise Ray once per process.

    Under `ray job submit` RAY_ADDRESS is set and the job joins that cluster; otherwise a local cluster
    starts with `ray.num_cpus` logical CPUs (more than the cores, so Train workers cannot starve Ray Data
    or the Tune trial driver of CPU slots).
    """
    import ray

    if ray.is_initialized():
        return
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        # address="local": always a new cluster, never one left by `ray start` on this machine. The
        # dashboard stays on: Ray Train's placement-group cleaner polls the State API it serves.
        ray.init(address="local", num_cpus=ray_cfg.num_cpus)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark for this process (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """VmHWM: the process's peak resident memory since start or the last reset (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
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
