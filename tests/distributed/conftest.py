"""Fixtures for multi-node tests: a Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`:
one head and worker nodes, each its own raylet and object store), helpers to kill and replace nodes, and a
process-tree cleanup for clusters started with `ray start`.

Every cluster here uses free ports (never 6379 or 10001) and token auth off on both sides, and is torn down by
the fixture that started it, process by process: nothing here runs `ray stop`, which would kill every Ray
cluster on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import free_port

WORKER_CPUS = 4
"""Logical CPUs per worker node. Tests size their actors so that exactly one fits a node (Train workers and embed
actors of 3 CPUs; a Tune trial of 1 CPU beside its Train worker of 2) and one CPU is left for Ray Data's read
tasks: a node filled by Train workers starves the datasets they stream from (seen here: a sweep hung)."""
OBJECT_STORE_BYTES = 200 * 1024 * 1024


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2,
             alive: Callable[[], bool] | None = None, explain: Callable[[], str] | None = None) -> Any:
    """Poll `condition` until it returns something truthy (returned) or `timeout` seconds pass (AssertionError
    naming `what`). `alive`: stop early, with the same error, once it returns False (e.g. the driver thread ended).
    `explain`: called when giving up; what it returns (e.g. the cluster's state) ends the error message."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if alive is not None and not alive():
            value = condition()  # one last look: the condition may have been met just before the end
            if value:
                return value
            raise AssertionError(f"gave up waiting for {what}: the watched work ended first{_explained(explain)}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{_explained(explain)}")


def _explained(explain: Callable[[], str] | None) -> str:
    if explain is None:
        return ""
    try:
        return "\n" + explain()
    except Exception as exc:  # noqa: BLE001 - the explanation must not hide the timeout
        return f"\n(could not describe the state: {exc!r})"


class MultiNode:
    """A head without CPUs (drivers, Ray Train controllers and the Serve controller and proxy live there, none
    needs a CPU) and named worker nodes of WORKER_CPUS logical CPUs, each with a custom resource `node_<name>`,
    `worker_slot: 1` and the label `mrl-test/node: <name>`. Work placed on CPUs therefore runs on worker nodes,
    which tests kill and replace; the head, which the driver is attached to, is never killed."""

    def __init__(self, gcs_port: int) -> None:
        from ray.cluster_utils import Cluster

        # Cluster writes its address into the machine-wide /tmp/ray/ray_current_cluster (and its shutdown deletes
        # that file): put back what was there, so `ray.init("auto")` elsewhere on the machine is not sent here.
        # Processes of this cluster must not read that file: the caller sets RAY_ADDRESS (see `multinode`).
        before = _address_file()
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "gcs_server_port": gcs_port, "include_dashboard": True,  # the State API needs it
            "dashboard_port": free_port(), "dashboard_agent_listen_port": free_port(),
            "object_store_memory": OBJECT_STORE_BYTES, "resources": {"head": 1}})
        _restore_address_file(before, ours=self.cluster.address)
        self.workers: dict[str, Any] = {}  # name -> ray._private.node.Node, live worker nodes only
        self.names: dict[str, str] = {self.cluster.head_node.node_id: "head"}  # node id -> name, all ever started
        self.killed: list[str] = []  # node ids removed by kill()
        self._next = 0

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self) -> str:
        """Start a new worker node; returns its name (a, b, c, ... in order of creation)."""
        name = "abcdefghijklmnopqrstuvwxyz"[self._next]
        self._next += 1
        node = self.cluster.add_node(num_cpus=WORKER_CPUS, object_store_memory=OBJECT_STORE_BYTES,
                                     resources={f"node_{name}": 1, "worker_slot": 1},
                                     labels={"mrl-test/node": name})
        self.workers[name] = node
        self.names[node.node_id] = name
        return name

    def kill(self, name: str) -> str:
        """Kill a worker node without grace (its raylet and every worker process on it); returns its node id."""
        node = self.workers.pop(name)
        self.cluster.remove_node(node, allow_graceful=False)
        self.killed.append(node.node_id)
        return node.node_id

    def name_of(self, node_id: str) -> str:
        return self.names.get(node_id, f"unknown node {node_id[:8]}")

    def live_worker_ids(self) -> set[str]:
        return {node.node_id for node in self.workers.values()}

    def ensure_workers(self, count: int = 2) -> None:
        """Top the cluster up to `count` live worker nodes (a test killed one and its replacement failed)."""
        while len(self.workers) < count:
            self.add()

    def actors(self, prefix: str, alive_only: bool = True) -> list:
        """Actors whose class name starts with `prefix` (ALIVE ones, or all the GCS still lists), from the State
        API of this cluster: always with an explicit address, since with several clusters on the machine Ray's
        address discovery may pick another one."""
        from ray.util.state import list_actors

        filters = [("state", "=", "ALIVE")] if alive_only else []
        try:
            found = list_actors(address=self.address, filters=filters, detail=True, limit=10000, timeout=20)
        except Exception:  # noqa: BLE001 - the State API hiccups while nodes die; the caller polls again
            return []
        return [a for a in found if (a.class_name or "").startswith(prefix)]

    def live_actors(self, prefix: str) -> list:
        """ALIVE actors of `prefix` on live nodes: the State API lists the actors of a killed node as ALIVE for a
        while after the kill."""
        live = self.live_worker_ids() | {self.cluster.head_node.node_id}
        return [a for a in self.actors(prefix) if a.node_id in live]

    def describe(self) -> str:
        """What a stalled test needs to see: each live node's free and total resources, the placement groups that
        are not removed (state, bundles, the node of each bundle) and the actors waiting to be placed."""
        import ray
        from ray.util.state import list_actors, list_placement_groups

        lines = ["cluster state:"]
        free = ray._private.state.available_resources_per_node()
        for node in ray.nodes():
            if node["Alive"]:
                total = {k: v for k, v in node["Resources"].items() if not k.startswith(("node:", "object_store", "memory"))}
                have = {k: round(v, 3) for k, v in free.get(node["NodeID"], {}).items() if k in total}
                lines.append(f"  node {self.name_of(node['NodeID'])}: free {have} of {total}")
        for pg in list_placement_groups(address=self.address, detail=True, limit=1000, timeout=20):
            if pg.state != "REMOVED":
                bundles = [(b.get("unit_resources"), self.name_of(b.get("node_id") or "")) for b in pg.bundles or []]
                lines.append(f"  placement group {pg.placement_group_id[:8]} {pg.state} creator job "
                             f"{pg.creator_job_id} bundles {bundles}")
        for actor in list_actors(address=self.address, detail=True, limit=10000, timeout=20):
            if actor.state not in ("ALIVE", "DEAD"):
                lines.append(f"  actor {actor.class_name} {actor.state} on {self.name_of(actor.node_id or '')} "
                             f"needs {actor.required_resources} pg {(actor.placement_group_id or '')[:8]}")
        return "\n".join(lines)

    def shutdown(self) -> None:
        before, ours = _address_file(), self.address
        self.cluster.shutdown()
        _restore_address_file(before, ours=ours)


def _address_file() -> str | None:
    """The machine-wide Ray address file's content (None: no file)."""
    from ray._common.utils import get_ray_address_file

    try:
        return Path(get_ray_address_file(None)).read_text()
    except OSError:
        return None


def _restore_address_file(content: str | None, ours: str | None) -> None:
    """Put `content` back into the address file (remove it where there was none), unless `content` was ours."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    if content is not None and content.strip() != ours:
        path.write_text(content)
    elif content is None and path.is_file() and path.read_text().strip() == ours:
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def multinode():
    """One cluster per test module: head plus worker nodes a and b. Tests that kill a node add a replacement,
    and `cluster` tops the worker count back up, so every test starts with two live worker nodes."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        # Token auth is on once ~/.ray/auth_token exists (see docs/ray-notes.md): off for nodes and driver alike.
        mp.setenv("RAY_AUTH_MODE", "disabled")
        # Every process of the cluster (raylets, and the workers they start, inherit this process's environment)
        # finds it by RAY_ADDRESS. Without it, Ray code running in a worker that asks the State API with no address
        # reads /tmp/ray/ray_current_cluster, which holds whatever cluster was there before (MultiNode puts it
        # back; often a dead one). Ray Train's PlacementGroupCleaner does exactly that: it then never saw a dead
        # Train controller, the placement group of a trial whose node was killed stayed reserved (rescheduled onto
        # the replacement node) and the retried trial's Train worker waited for CPUs for ever.
        gcs_port = free_port()
        mp.setenv("RAY_ADDRESS", f"{ray.util.get_node_ip_address()}:{gcs_port}")
        if ray.is_initialized():
            ray.shutdown()
        cluster = MultiNode(gcs_port)
        try:
            assert cluster.address == os.environ["RAY_ADDRESS"], (cluster.address, os.environ["RAY_ADDRESS"])
            cluster.add()
            cluster.add()
            ray.init(address=cluster.address)

            def state_api_address() -> str:  # nested, so Ray ships it by value: workers cannot import this module
                """The cluster a worker's State API call without an address goes to (Ray Train's cleaner's)."""
                from ray._private.services import canonicalize_bootstrap_address_or_die

                return canonicalize_bootstrap_address_or_die(None)

            on_a_worker = ray.remote(num_cpus=0, resources={"worker_slot": 0.01})(state_api_address)
            found = ray.get(on_a_worker.remote())
            assert found == cluster.address, f"a worker's State API would ask {found}, not this cluster"
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


@pytest.fixture
def cluster(multinode):
    multinode.ensure_workers(2)
    return multinode


@pytest.fixture
def gate(tmp_path):
    """A `gates.Gate` in the test's directory; every hold is opened when the test ends, so a test that fails while
    workers wait at a hold leaves none of them holding the cluster's CPUs for the next test."""
    from .gates import Gate

    gate = Gate(tmp_path / "gate")
    yield gate
    for hold in gate.directory.glob("hold-*"):
        hold.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def fashion_shards(tmp_path_factory) -> str:
    """Where stages convert Fashion-MNIST into Parquet shards (data.shards_path), shared by the tests of a session
    so the conversion runs once."""
    return str(tmp_path_factory.mktemp("fashion-mnist-shards"))


def log_tiny_model(output_dir: Path, name: str = "tiny") -> str:
    """Register a small untrained CNN (d = 16, sizes [8, 16]) in the MLflow store of `output_dir`; returns its
    models:/ URI. Embedding tests need a model, not a trained one."""
    import mlflow

    from mrl.artifacts import tracking
    from mrl.config import MlflowConfig
    from mrl.core.models.model import build_model

    tracking.setup(MlflowConfig(), str(output_dir))
    model = build_model({"encoder": "cnn", "dim": 16, "head": "mrl", "num_classes": 10,
                         "nesting": {"schedule": "list", "sizes": [8, 16]}, "backbone": {"channels": [8, 16]}})
    with mlflow.start_run(run_name="tiny-model"):
        tracking.log_model(model, name, {"dim": 16, "sizes": [8, 16]})
    return f"models:/{name}/1"


def latest_checkpoint_epoch(run_dir: Path) -> int:
    """The epoch of the latest checkpoint Ray Train's controller registered for a run (its checkpoint manager
    snapshot), 0 before the first. Registered means a restart resumes from it, unlike a checkpoint directory
    that merely exists."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


# ---------------------------------------------------------------------------------------- `ray start` clusters

def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process (Linux /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        found[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return found


def cluster_processes(markers: list[str]) -> set[int]:
    """The processes of one `ray start` cluster: those whose command line holds one of `markers` (its private
    temp dir, its GCS address), and all their descendants (the raylet's workers and agents, the dashboard's
    modules, the worker nodes the fake autoscaler's monitor process starts)."""
    procs = _processes()
    selected = {pid for pid, (_, cmd) in procs.items() if any(m in cmd for m in markers)} - {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in selected and pid not in selected and pid != os.getpid():
                selected.add(pid)
                grew = True
    return selected


def kill_processes(pids: set[int], grace: float = 2.0) -> set[int]:
    """SIGTERM these processes, SIGKILL whatever is left after `grace` seconds; returns those still alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline:
            pids = {pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)}
            if not pids:
                return set()
            time.sleep(0.2)
    return pids


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
