"""Connecting to Ray: a new local cluster by default, or the cluster in RAY_ADDRESS / ray.address."""

from __future__ import annotations

import os


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
