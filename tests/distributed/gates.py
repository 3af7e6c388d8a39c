"""Gates: points where a stage's workers stop and wait until the test lets them go on, so that a test kills a node
while the work it watches is provably in progress, instead of racing that work with a poll.

A gate is a directory on the filesystem every node of the test cluster shares (this machine's). The test closes a
named hold (`Gate.close`), workers that reach it record their arrival (pid, node, rank) in a marker file and wait
until the test opens it again (`Gate.open`). A marker file stays after the process that wrote it is gone, so the
test cannot miss an arrival however loaded the machine is. Every arrival is recorded, held or not, so a test also
learns where later attempts ran.

The holders are classes whose instances Ray pickles into worker processes (Train workers, Ray Data actors), which
import this module by name like any other test code.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOLD_TIMEOUT = 1800.0
"""Seconds a worker waits at a closed hold before it gives up (raises): a test that never opens a hold fails with
its own timeout, not with workers stuck forever."""


class Gate:
    """Named holds in `directory`: `hold-<name>` exists while closed; `at-<name>-<pid>.json` records an arrival."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def close(self, name: str) -> None:
        (self.directory / f"hold-{name}").touch()

    def open(self, name: str) -> None:
        (self.directory / f"hold-{name}").unlink(missing_ok=True)

    def arrivals(self, name: str) -> list[dict[str, Any]]:
        """Every arrival at `name` so far, oldest first (each: pid, node_id, time and what the worker added)."""
        found = []
        for marker in self.directory.glob(f"at-{name}-*.json"):
            try:
                found.append(json.loads(marker.read_text()))
            except (OSError, ValueError):  # being written: the next look reads it
                continue
        return sorted(found, key=lambda a: a["time"])

    # ------------------------------------------------------------------------------------ in worker processes

    def arrive(self, name: str, **info: Any) -> None:
        """Record this process's arrival at `name`, then wait while the hold is closed."""
        import ray

        record = {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(), "time": time.time(),
                  **info}
        marker = self.directory / f"at-{name}-{os.getpid()}.json"
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, marker)  # whole or absent: the test never reads half a marker
        deadline = time.time() + HOLD_TIMEOUT
        while (self.directory / f"hold-{name}").exists():
            if time.time() > deadline:
                raise TimeoutError(f"hold {name!r} in {self.directory} stayed closed for {HOLD_TIMEOUT:.0f}s")
            time.sleep(0.1)


class HeldTrainLoop:
    """A Ray Train worker function: the platform's loop (`loop`), with every epoch's report first passing the gate
    `epoch-<n>`. Closing `epoch-2` stops every worker after it trained epoch 2 and before it reports (and so
    checkpoints) it: epoch 1 is checkpointed, epoch 2 is not, and the run cannot finish."""

    def __init__(self, gate: Gate, loop: Callable[[dict], None]) -> None:
        self.gate, self.loop = gate, loop

    def __call__(self, loop_config: dict) -> None:
        import ray.train

        report = ray.train.report
        context = ray.train.get_context()

        def gated_report(metrics: dict, *args: Any, **kwargs: Any) -> None:
            self.gate.arrive(f"epoch-{int(metrics['epoch'])}", rank=context.get_world_rank(),
                             run=context.get_experiment_name())
            report(metrics, *args, **kwargs)

        ray.train.report = gated_report  # this worker process's module: the loop looks it up at every call
        try:
            self.loop(loop_config)
        finally:
            ray.train.report = report


def hold_train_loop(gate: Gate) -> None:
    """In this process, make the train stage hand Ray Train the gated loop (idempotent)."""
    import mrl.stages.train as train_stage

    if not isinstance(train_stage.train_loop_per_worker, HeldTrainLoop):
        train_stage.train_loop_per_worker = HeldTrainLoop(gate, train_stage.train_loop_per_worker)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def held_embedder(gate: Gate, after_units: int) -> type:
    """The embed stage's actor class with a gate `unit` that each actor passes before it starts a unit once at
    least `after_units` unit files exist: closing it stops the whole pool mid-split, each actor holding its model,
    none writing, and every unit file written belonging to a finished task (so nothing written is written again
    when a held actor dies and its task is retried)."""
    from mrl.stages.embed import UnitEmbedder

    class HeldUnitEmbedder(UnitEmbedder):
        def __call__(self, batch: dict) -> dict:
            if len(list(Path(self.out).glob("part-*.parquet"))) >= after_units:  # a local run directory
                gate.arrive("unit", units=[int(u) for u in batch["unit"]])
            return super().__call__(batch)

    return HeldUnitEmbedder


def _pickle_by_value() -> None:
    """Workers cannot import this module (pytest puts tests/ on the test process's path, not theirs): Ray pickles
    its classes by value instead of by name."""
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


_pickle_by_value()
