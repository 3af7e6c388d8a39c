"""The stages on a Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`: a head and worker
nodes, each its own raylet), with worker processes and whole nodes killed while they work. Each test states what
survived and what was lost.

One cluster serves the module (see conftest.MultiNode): a head without CPUs, where the driver (this process), Ray
Train's controller and Serve's controller and proxy live, and two worker nodes of 4 logical CPUs. A test that kills
a node adds a replacement, so the next one starts with two worker nodes again. Stages are driven in a thread
(`ensure_ray` returns at once: this process is already connected) while the test watches the cluster through the
State API and kills what it must when a condition is met, never after a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mrl.retrieval.modes import SearchSettings

from .conftest import latest_checkpoint_epoch, log_tiny_model, wait_for
from .gates import Gate, HeldTrainLoop, alive, held_embedder, hold_train_loop
from conftest import REPO, free_port

# Gated waits cannot be missed, only be slow: on this 2-core machine beside two busy processes a Train worker
# group took 104 s just to start. WAIT bounds what a gate or the run's end may take, SHORT what follows a kill or
# a checkpoint; each test may take up to 40 minutes before pytest-timeout calls it hung.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
WAIT, SHORT = 900, 300


class Driver(threading.Thread):
    """Runs a stage function in a thread and keeps its result or exception."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.result, self.error = fn, args, None, None

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def outcome(self, timeout: float):
        self.join(timeout)
        assert not self.is_alive(), f"{self.fn.__name__} still running after {timeout:.0f}s"
        if self.error is not None:
            raise self.error
        return self.result


def generation(cluster, seen: set[str], prefix: str, count: int) -> list:
    """`count` live actors of `prefix` none of which is in `seen` (a new worker group), or [] while there are
    fewer."""
    fresh = [a for a in cluster.live_actors(prefix) if a.actor_id not in seen]
    return fresh if len(fresh) == count else []


def held(gate: Gate, name: str, count: int) -> list[dict]:
    """The `count` arrivals at gate `name` whose processes are alive (held there while it is closed), or []."""
    live = [a for a in gate.arrivals(name) if alive(a["pid"])]
    return live if len(live) == count else []


# ----------------------------------------------------------------------------------------------------- train

def test_training_survives_a_killed_worker_and_a_killed_node(cluster, tmp_path, fashion_shards, monkeypatch, gate):
    """run_train with 2 Ray Train workers, one per worker node, checkpoints on a `file://` URI (Ray Train's pyarrow
    filesystem layer). Once the epoch-1 checkpoint is registered, one worker process is SIGKILLed (mid-epoch 2);
    once the epoch-2 checkpoint is registered, the node of a worker is killed (mid-epoch 3) and a replacement node
    joins. Lost: the epoch in progress at each kill. Survived: everything checkpointed; the run resumes twice from
    its latest checkpoint and finishes, each epoch logged exactly once in MLflow, and one model version is
    registered whose run is the train run."""
    import mlflow
    from mlflow import MlflowClient

    import mrl.stages.train as train_stage
    from mrl.config import TrainJobConfig
    from mrl.configio import load_config

    # checkpoints on a file:// URI (storage_path), as a cluster would use s3:// or an NFS mount. On one machine
    # every node sees it; Ray Train V2 checks that with a marker file the driver writes and each worker looks for
    # before it persists a checkpoint.
    storage = tmp_path / "shared-storage"
    out = tmp_path / "out"
    job = load_config(TrainJobConfig, REPO / "jobs" / "train.yaml", [
        f"output_dir={out}", "run_name=multinode", "data.train_limit=1500", f"data.shards_path={fashion_shards}",
        f"storage_path={storage.as_uri()}",
        "model.dim=16", "train.epochs=3", "train.batch_size=32", "resources.num_workers=2",
        "resources.cpus_per_worker=3", "resources.threads_per_worker=1", "resources.max_failures=3"])
    run_dir = storage / "multinode"
    # every worker stops before it reports epoch 2 (and again before epoch 3) until the test opens the hold: each
    # kill below lands while the run is provably in that epoch, however slow the machine
    gate.close("epoch-2")
    gate.close("epoch-3")
    monkeypatch.setattr(train_stage, "train_loop_per_worker",
                        HeldTrainLoop(gate, train_stage.train_loop_per_worker))
    driver = Driver(train_stage.run, job)
    driver.start()

    # generation 1: two workers on two different worker nodes, held after training epoch 2; kill one worker
    first = wait_for(lambda: held(gate, "epoch-2", 2), WAIT, "2 Train workers at the end of epoch 2",
                     alive=driver.is_alive)
    assert len({a["node_id"] for a in first}) == 2 and {a["node_id"] for a in first} <= cluster.live_worker_ids(), \
        [(a["pid"], cluster.name_of(a["node_id"])) for a in first]
    wait_for(lambda: latest_checkpoint_epoch(run_dir) >= 1, SHORT, "the epoch-1 checkpoint", alive=driver.is_alive)
    assert latest_checkpoint_epoch(run_dir) == 1  # epoch 2 waits at the gate: it cannot have been checkpointed
    os.kill(first[0]["pid"], signal.SIGKILL)
    killed_worker_at = time.time()
    wait_for(lambda: not any(alive(a["pid"]) for a in first), SHORT, "the first worker group torn down")
    gate.open("epoch-2")

    # generation 2: a new group (both workers restart from the epoch-1 checkpoint), again on two nodes, held
    # before reporting epoch 3; kill a node
    second = wait_for(lambda: held(gate, "epoch-3", 2), WAIT, "the restarted Train workers at the end of epoch 3",
                      alive=driver.is_alive)
    assert not {a["pid"] for a in second} & {a["pid"] for a in first}
    assert len({a["node_id"] for a in second}) == 2, [(a["pid"], cluster.name_of(a["node_id"])) for a in second]
    wait_for(lambda: latest_checkpoint_epoch(run_dir) >= 2, SHORT, "the epoch-2 checkpoint", alive=driver.is_alive)
    assert latest_checkpoint_epoch(run_dir) == 2
    victim = cluster.name_of(second[0]["node_id"])
    dead_node = cluster.kill(victim)
    killed_node_at = time.time()
    replacement = cluster.add()
    wait_for(lambda: not any(alive(a["pid"]) for a in second), SHORT, "the second worker group torn down")
    gate.open("epoch-3")
    result = driver.outcome(WAIT)

    # generation 3: on the surviving node and the replacement, never on the dead one
    third = [a for a in gate.arrivals("epoch-3") if a["pid"] not in {b["pid"] for b in second}]
    placed = sorted(cluster.name_of(a["node_id"]) for a in third)
    assert replacement in placed and victim not in placed and len(set(placed)) == 2, placed
    assert dead_node not in {a["node_id"] for a in third}

    # no completed epoch repeated, none lost: rank 0 logs each epoch once, at the step of its number
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    history = sorted(client.get_metric_history(result["run_id"], "val_top1_d16"), key=lambda m: m.timestamp)
    assert [m.step for m in history] == [1, 2, 3]
    # epoch 1 ended before the first kill, epoch 2 between the kills, epoch 3 after the node kill: each kill cut
    # an epoch short, which the restarted group then trained from the previous checkpoint
    ends = [m.timestamp / 1000 for m in history]
    assert ends[0] < killed_worker_at < ends[1] < killed_node_at < ends[2], (ends, killed_worker_at, killed_node_at)
    assert result["metrics"]["epoch"] == 3

    # checkpoints on the URI's filesystem, none under the default <output_dir>/ray; the marker file is how Ray
    # Train checks that storage is shared (a worker that cannot see it refuses to persist a checkpoint)
    assert (run_dir / ".validate_storage_marker").is_file()
    assert latest_checkpoint_epoch(run_dir) == 3
    assert len(list(run_dir.glob("checkpoint_*/checkpoint.pt"))) == 2  # CheckpointConfig(num_to_keep=2)
    assert not (out / "ray").exists()

    # registered once, lineage intact: the version's run is the train run and its checkpoint is the final one
    versions = client.search_model_versions(f"name='{job.mlflow.registered_model}'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", result["run_id"])]
    run = client.get_run(result["run_id"])
    assert run.data.tags["mrl.stage"] == "train"
    checkpoint = Path(run.data.tags["mrl.checkpoint"])  # the path on the storage filesystem, without file://
    assert checkpoint.parent == run_dir
    metadata = mlflow.models.get_model_info(result["model_uri"]).metadata
    assert metadata["train_run_id"] == result["run_id"] and metadata["checkpoint"] == str(checkpoint)
    assert train_stage.read_checkpoint(checkpoint / "checkpoint.pt")["epoch"] == 2  # 0-based: the third epoch


# ----------------------------------------------------------------------------------------------------- embed

def test_embedding_survives_a_killed_node(cluster, tmp_path, fashion_shards, monkeypatch, gate):
    """run_embed with an actor pool of 2 (3 CPUs each: one actor per worker node) over 80 units of 250 rows. Once
    3 units are written, each actor stops before its next unit (a gate), the node of one actor is killed and a
    replacement joins. Lost: the unit that actor was about to write. Survived: every unit file written; the job finishes (Ray Data
    retries the dead actor's task on a restarted actor) or, if it fails, a rerun of the same run_name writes only
    the missing units. Either way the output holds each of the 20,000 ids exactly once."""
    import pyarrow.parquet as pq

    import mrl.stages.embed as embed_stage
    from mrl.config import EmbedJobConfig
    from mrl.configio import load_config
    from mrl.stages.embed import run as run_embed
    from mrl.stages.embed import verify_split

    model_uri = log_tiny_model(tmp_path)
    job = load_config(EmbedJobConfig, REPO / "jobs" / "embed.yaml", [
        f"output_dir={tmp_path}", f"model_uri={model_uri}", "run_name=nodes", "embed.splits=[train]",
        "embed.rows_per_file=250", "embed.batch_size=250", "data.train_limit=20000",
        f"data.shards_path={fashion_shards}", "embed.num_actors=2", "embed.cpus_per_actor=3"])
    split = tmp_path / "embeddings" / "nodes" / "train"
    working = tmp_path / "embeddings" / ".nodes.partial" / "train"  # where the run writes until it is complete
    units = lambda where=split: sorted(where.glob("part-*.parquet"))
    gate.close("unit")
    monkeypatch.setattr(embed_stage, "UnitEmbedder", held_embedder(gate, after_units=3))
    driver = Driver(run_embed, job)
    driver.start()

    pool = wait_for(lambda: held(gate, "unit", 2), WAIT, "both actors of the pool held after 3 units",
                    alive=driver.is_alive)
    assert len({a["node_id"] for a in pool}) == 2, [cluster.name_of(a["node_id"]) for a in pool]
    victim = cluster.name_of(pool[0]["node_id"])
    before = {p.name: p.stat().st_mtime_ns for p in units(working)}
    assert not split.parent.exists()  # nothing published while the run is incomplete
    cluster.kill(victim)
    cluster.add()
    wait_for(lambda: not alive(pool[0]["pid"]), SHORT, "the killed node's actor gone")
    gate.open("unit")
    assert 3 <= len(before) < 80, f"{len(before)} of 80 units written when the node was killed"

    reran = False
    try:
        result = driver.outcome(WAIT)
    except Exception as exc:  # noqa: BLE001 - the documented way back: rerun the same run_name
        print(f"embed job failed after the node kill ({exc!r}); rerunning run_name=nodes")
        reran = True
        result = run_embed(job)

    after = {p.name: p.stat().st_mtime_ns for p in units()}
    assert len(after) == 80
    assert all(after[name] == mtime for name, mtime in before.items())  # written units were not written again
    ids = np.concatenate([pq.read_table(p, columns=["id"]).column("id").to_numpy() for p in units()])
    assert len(ids) == 20000 and len(np.unique(ids)) == 20000 and set(ids.tolist()) == set(range(20000))
    assert verify_split(split, np.arange(20000)) == {"rows": 20000, "files": 80, "duplicates": 0, "missing": 0}
    manifest = json.loads((split.parent / "manifest.json").read_text())
    assert manifest["verified"]["train"] == {"rows": 20000, "files": 80, "duplicates": 0, "missing": 0}
    assert result["rows"] == {"train": 20000}
    # the dead actor was held between units, and a finished pool removes temporary files an actor lost mid-unit
    # leaves anyway: none is left
    leftovers = sorted(p.name for p in split.glob(".part-*"))
    print(f"embed: {len(before)} of 80 units written before the kill; finished {'by a rerun' if reran else 'by itself'}"
          f"; temporary files left: {leftovers}")
    assert not leftovers, leftovers


def node_killed_under_load(cluster, url: str, victim, body, right, concurrency: int = 8
                           ) -> tuple[list[tuple[float, float, bool]], float, float]:
    """`concurrency` closed-loop clients POST /search (client w sends body(i) for i = w, w + concurrency, ...; a
    200 reply is right when right(i, reply) holds); once 50 are answered right, the node victim() names is killed
    and a replacement joins; the clients stop 2 s after 10 right answers followed the kill.

    Returns:
        ([(sent, answered, right)] of every request, the kill's time, the time the clients were told to stop).
    """
    import concurrent.futures

    import requests

    stopping, lock = threading.Event(), threading.Lock()
    answered: list[tuple[float, float, bool]] = []

    def client(worker: int) -> None:
        session, i = requests.Session(), worker
        while not stopping.is_set():
            sent = time.time()
            try:
                reply = session.post(f"{url}/search", json=body(i), timeout=120)
                ok = reply.status_code == 200 and right(i, reply.json())
            except requests.RequestException:
                ok = False
            with lock:
                answered.append((sent, time.time(), ok))
            i += concurrency

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        clients = [pool.submit(client, w) for w in range(concurrency)]
        try:
            wait_for(lambda: sum(r for *_, r in answered) >= 50, 120, "50 answers before the kill", interval=0.05)
            cluster.kill(victim())
            killed_at = time.time()
            cluster.add()
            wait_for(lambda: sum(ok and e > killed_at for _, e, ok in answered) >= 10, 300,
                     "10 answers after the kill", interval=0.05)
            time.sleep(2.0)  # load goes on a little while after the service came back
        finally:
            stopping.set()
            stop = time.time()
        for c in clients:
            c.result()
    return answered, killed_at, stop


# ----------------------------------------------------------------------------------------------------- serve

def test_serving_survives_a_killed_node_under_load(cluster, tmp_path):
    """The service (the library's build_app) with 2 replicas, on two worker nodes, behind the HTTP proxy on the
    head. 8 client threads send /search requests; once 50 have been answered, the node of one replica is killed and
    a replacement node joins; the clients stop 2 s after 10 requests were answered after the kill.

    Lost: the requests in flight at the dead replica when its node died, and those the proxy still routed to it
    before the cluster noticed the death (each client has one request outstanding: at most 8 of each kind; on a
    loaded machine noticing takes tens of seconds, during which those clients wait). Survived: every request that
    went to the other replica, before and after the kill (none fails on its own: a slow answer is not a failure,
    the client waits up to 120 s), the controller starts a new replica on a live node, and afterwards both answer.
    """
    import requests
    from ray import serve

    from mrl.artifacts.index import write_index
    from mrl.config import ServeConfig
    from mrl.service.app import build_app

    index = tmp_path / "index"
    vectors = np.random.default_rng(0).normal(size=(500, 32)).astype(np.float32)
    write_index(index, np.arange(500), np.arange(500) % 4, vectors, [8, 32], "flat", {})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # one proxy, on the head: on one machine every node's proxy would want the same port
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        cfg = ServeConfig(port=port, num_replicas=2, max_replicas_per_node=1, encoder=False, search=SearchSettings(shortlist_size=8))
        serve.run(build_app(str(index), cfg), name="mrl", route_prefix="/", blocking=False)
        replicas = wait_for(lambda: generation(cluster, set(), "ServeReplica:mrl:Retriever", 2), 60, "2 replicas")
        assert len({r.node_id for r in replicas}) == 2 and {r.node_id for r in replicas} <= cluster.live_worker_ids()

        concurrency = 8
        answered, killed_at, stop = node_killed_under_load(
            cluster, url, lambda: cluster.name_of(replicas[0].node_id), lambda i: {"id": i % 500, "k": 5},
            lambda i, body: body.get("ids", [None])[0] == i % 500, concurrency)
        failed = [(round(s - killed_at, 2), round(e - killed_at, 2)) for s, e, ok in answered if not ok]
        ok_after = sorted(e for s, e, ok in answered if ok and e > killed_at)
        gaps = np.diff([killed_at, *ok_after, stop])
        print(f"serve: {len(answered)} requests, {len(failed)} failed (sent, ended, s from the kill): {failed}; "
              f"{len(ok_after)} answered after the kill, longest silence {gaps.max():.2f}s")
        before = [f for f in failed if f[1] < 0]  # ended before the kill: nothing to do with it
        in_flight = [f for f in failed if f[0] < 0 <= f[1]]
        routed_after = [f for f in failed if f[0] >= 0]
        assert not before, f"requests failed before any node was killed: {before}"
        assert len(in_flight) <= concurrency and len(routed_after) <= concurrency, failed
        assert len(ok_after) >= 10

        # the controller replaces the lost replica on a live node (wherever SPREAD puts it: seen here beside the
        # survivor rather than on the new node, as nothing asks for one replica per node); then both answer
        def recovered():
            status = serve.status().applications["mrl"].deployments["Retriever"]
            live = cluster.live_actors("ServeReplica:mrl:Retriever")
            return str(status.status).endswith("HEALTHY") and status.replica_states == {"RUNNING": 2} and \
                len(live) == 2 and live

        live = wait_for(recovered, 90, "2 RUNNING replicas on live nodes", interval=0.5)
        print(f"serve: replicas after recovery on nodes {sorted(cluster.name_of(r.node_id) for r in live)}")
        replies = [requests.post(f"{url}/search", json={"id": i, "k": 5}, timeout=30) for i in range(20)]
        assert [r.status_code for r in replies] == [200] * 20 and [r.json()["ids"][0] for r in replies] == \
            list(range(20))
    finally:
        serve.shutdown()


def test_a_sharded_index_survives_a_killed_node_under_load(cluster, tmp_path):
    """A 4-shard index, each shard's deployment with 2 replicas at most one per node, and 2 Retriever replicas,
    on two worker nodes (so each node holds one replica of every shard and a Retriever). Exact answers are the
    unsharded index's and adaptive ones the merged per-shard plan's. 8 clients query by id; once 50 are answered,
    a node is killed and a replacement joins.

    Lost: at most the requests in flight at the dead node's Retriever and those the proxy routed to it before the
    cluster noticed (as for a whole index, at most 8 of each). Survived: every search a surviving Retriever sent to
    a shard replica on the dead node (retried on the shard's other replica); no reply mixes versions or misses a
    shard. Then a shard deleted outright: `partial` replies name it."""
    import requests
    from ray import serve

    from mrl.artifacts.index import load_index, load_shard, write_index, write_sharded_index
    from mrl.config import ServeConfig
    from mrl.retrieval.modes import make_plan
    from mrl.retrieval.sharded import ShardedEngine, shard_hits
    from mrl.service.app import deploy

    rows, dim = 800, 32
    vectors = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    ids = np.arange(rows)
    write_index(tmp_path / "whole", ids, ids % 4, vectors, [8, 32], "flat", {"index_run_id": "v1"})
    write_sharded_index(tmp_path / "sharded", ids, ids % 4, vectors, [8, 32], "flat", {"index_run_id": "v1"},
                        shards=4, by="hash")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        cfg = ServeConfig(port=port, num_replicas=2, max_replicas_per_node=1, encoder=False, shard_replicas=2,
                          shard_max_replicas_per_node=1, shard_cpus=0.5, shard_timeout_s=20.0,
                          on_missing_shard="partial", search=SearchSettings(shortlist_size=8, shortlist_k=40))
        apps = deploy(str(tmp_path / "sharded"), cfg, name="mrl")
        for app in apps[1:]:
            placed = wait_for(lambda: generation(cluster, set(), f"ServeReplica:{app}:Shard", 2), 60, f"{app} x2")
            assert len({r.node_id for r in placed}) == 2, f"{app}: both replicas on one node"

        queries = np.random.default_rng(1).normal(size=(10, dim)).astype(np.float32)
        exact = shard_hits(load_index(tmp_path / "whole"), make_plan("full", SearchSettings(), dim, 10), queries)
        reference = ShardedEngine([load_shard(tmp_path / "sharded", i) for i in range(4)]).hits(
            make_plan("adaptive", SearchSettings(shortlist_size=8, shortlist_k=40), dim, 10), queries)
        for q, want_exact, want_adaptive in zip(queries, exact.ids.tolist(), reference.ids.tolist()):
            assert requests.post(f"{url}/search", json={"vector": q.tolist(), "mode": "full"},
                                 timeout=60).json()["ids"] == want_exact
            assert requests.post(f"{url}/search", json={"vector": q.tolist()}, timeout=60).json()["ids"] == \
                want_adaptive

        concurrency = 8
        answered, killed_at, _ = node_killed_under_load(
            cluster, url, lambda: cluster.name_of(cluster.live_actors("ServeReplica:mrl:Retriever")[0].node_id),
            lambda i: {"id": i % rows, "k": 5, "mode": "full"},
            lambda i, body: body.get("ids", [None])[0] == i % rows and body["index"]["version"] == "v1"
            and body["shards"]["answered"] == 4 and not body["partial"], concurrency)
        failed = [(round(s - killed_at, 2), round(e - killed_at, 2)) for s, e, ok in answered if not ok]
        print(f"sharded serve: {len(answered)} requests, {len(failed)} failed (sent, ended, s from the kill): "
              f"{failed}")
        assert not [f for f in failed if f[1] < 0], f"requests failed before any node was killed: {failed}"
        assert len([f for f in failed if f[0] < 0 <= f[1]]) <= concurrency, failed
        assert len([f for f in failed if f[0] >= 0]) <= concurrency, failed

        serve.delete(apps[3])  # shard 2 gone altogether: partial answers name it
        reply = requests.post(f"{url}/search", json={"vector": queries[0].tolist(), "mode": "full"}, timeout=60)
        body = reply.json()
        assert reply.status_code == 200 and body["partial"] and body["shards"]["missing"] == [2], body
        others = np.setdiff1d(ids, load_shard(tmp_path / "sharded", 2).ids)  # the exact top-10 of the other shards
        unit = vectors[others] / np.linalg.norm(vectors[others], axis=1, keepdims=True)
        assert body["ids"] == others[np.argsort(-(unit @ queries[0]), kind="stable")[:10]].tolist()
    finally:
        serve.shutdown()


# ------------------------------------------------------------------------------------------------------ tune

def test_a_sweep_retries_the_trial_whose_node_died(cluster, tmp_path, fashion_shards, gate):
    """Two trials of the platform's trainable (mrl.stages.tune._trial: one Ray Train run per trial) at once, one
    per worker node (each trial asks for the node's `worker_slot`; its Train worker of 2 CPUs then fits only
    beside it or on the other node, leaving a CPU per node for Ray Data). Every Train worker stops before it
    reports epoch 2 (a gate); once both trials' workers are held there and their epoch-1 checkpoints are registered,
    the node of one trial's driver is killed and a replacement joins; the gate opens once each trial's Train run is
    held by exactly one live worker again (the retry's, or the survivor's).

    Lost: the trial on that node (its driver, its Train controller and worker), the epoch it was training, and
    the Tune reports of epochs it had checkpointed but not yet delivered to Tune (the trial's report queue dies
    with it; at most the one in flight). Survived: every checkpoint. Tune retries the trial
    (FailureConfig(max_failures=1)) on the replacement node and its Train run resumes from its latest
    checkpoint; the other trial finishes too (restarting its Train worker from its checkpoint if that worker was
    on the dead node). No epoch is reported twice, both trials end at epoch 3.

    The sweep is built here, not with run_tune: make_tuner retries failed trials (TuneJobConfig.max_failures, the
    same FailureConfig as here) but has no per-trial resources, so it cannot pin trials to different nodes."""
    import dataclasses

    from ray import tune

    from mrl.config import TuneJobConfig
    from mrl.configio import load_config, to_dict
    from mrl.data.sources import prepare_data
    from mrl.stages import tune as tune_stage

    job = load_config(TuneJobConfig, REPO / "tuning" / "search_space.yaml", [
        f"output_dir={tmp_path}", "base.data.train_limit=1200", f"base.data.shards_path={fashion_shards}",
        "base.model.dim=16", "base.train.epochs=3", "base.train.batch_size=32", "base.resources.num_workers=1",
        "base.resources.cpus_per_worker=2", "base.resources.threads_per_worker=1", "base.resources.max_failures=2",
        "search.algorithm=grid", "search.num_samples=1", "search.scheduler=fifo", "space.schedules=[log]",
        "space.min_sizes=[4]", "space.smallest_weight=[1.0, 2.0]", "space.weight_alpha=[0.0]",
        "space.deploy_sizes=[8]", "max_concurrent_trials=2"])
    base = dataclasses.replace(job.base, output_dir=job.output_dir, mlflow=job.mlflow,  # as run_tune does
                               data=prepare_data(job.base.data, job.output_dir))

    gate.close("epoch-2")

    def trial(config: dict) -> None:
        # a wrapper of our own: with_resources sets an attribute on the function it is given, and on the
        # platform's _trial that would make every later sweep in this process ask for `worker_slot`. It records
        # each attempt (the trial's driver: pid, node) and has the trial's Train workers pass the gate.
        import ray.tune

        gate.arrive("trial", trial_id=ray.tune.get_context().get_trial_id())
        hold_train_loop(gate)
        tune_stage._trial(config)

    tuner = tune.Tuner(
        tune.with_resources(trial, {"CPU": 1, "worker_slot": 1}),
        param_space={"base": to_dict(base), "deploy_sizes": list(job.space.deploy_sizes),
                     "params": tune_stage.param_space(job)},
        tune_config=tune.TuneConfig(metric=tune_stage.small_metric(job), mode="max", max_concurrent_trials=2),
        run_config=tune.RunConfig(name="nodes", storage_path=str(tmp_path / "ray"),
                                  failure_config=tune.FailureConfig(max_failures=job.max_failures)))
    driver = Driver(tuner.fit)
    driver.start()
    train_runs = lambda: sorted((tmp_path / "ray").glob("tune-trial-*"))

    def reports() -> dict[str, list[dict]]:
        """trial id -> the rows Tune logged for it (result.json, written by Tune's driver in this process)."""
        rows = {}
        for file in (tmp_path / "ray" / "nodes").glob("*/result.json"):
            lines = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
            if lines:
                rows[lines[0]["trial_id"]] = lines
        return rows

    def one_live_worker_per_run() -> list[dict]:
        """The held Train workers, when each trial's run is held by exactly one live worker and by no dead one."""
        arrivals = gate.arrivals("epoch-2")
        runs = {a["run"] for a in arrivals}
        live = [a for a in arrivals if alive(a["pid"])]
        return live if len(runs) == 2 and len(live) == 2 and {a["run"] for a in live} == runs else []

    first = wait_for(one_live_worker_per_run, WAIT, "both trials' Train workers at the end of epoch 2",
                     alive=driver.is_alive)
    wait_for(lambda: len(train_runs()) == 2 and all(latest_checkpoint_epoch(r) >= 1 for r in train_runs()), SHORT,
             "an epoch-1 checkpoint in both trials' Train runs", alive=driver.is_alive)
    trials = gate.arrivals("trial")  # both trials are held mid-run: neither has finished
    assert len(trials) == 2 and all(alive(t["pid"]) for t in trials), trials
    assert len({t["node_id"] for t in trials}) == 2 and {t["node_id"] for t in trials} <= cluster.live_worker_ids(), \
        [cluster.name_of(t["node_id"]) for t in trials]
    checkpointed = {r.name: latest_checkpoint_epoch(r) for r in train_runs()}
    assert set(checkpointed.values()) == {1}  # epoch 2 waits at the gate: it cannot have been checkpointed
    reported = {trial: [row["epoch"] for row in rows] for trial, rows in reports().items()}
    cluster.kill(cluster.name_of(trials[0]["node_id"]))
    replacement = cluster.add()
    # the retry's Train worker reaches the gate (and so does the other trial's restarted one, if its worker was
    # on the dead node); the killed attempt's worker is gone wherever it ran
    killed_run, first_pids = f"tune-trial-{trials[0]['trial_id']}", {a["pid"] for a in first}
    wait_for(lambda: any(a["run"] == killed_run and a["pid"] not in first_pids for a in one_live_worker_per_run()),
             WAIT, "the retried trial's Train worker at the end of epoch 2", alive=driver.is_alive,
             explain=cluster.describe)
    gate.open("epoch-2")
    results = driver.outcome(WAIT)

    assert results.num_errors == 0 and len(results) == 2
    assert sorted(r.metrics["epoch"] for r in results) == [3, 3]
    final = reports()
    killed = [trial for trial, rows in final.items() if rows[0]["pid"] == trials[0]["pid"]]
    assert len(killed) == 1, {t: [(r["pid"], r["epoch"]) for r in rows] for t, rows in final.items()}
    for trial, rows in final.items():
        epochs, iterations = [r["epoch"] for r in rows], [r["training_iteration"] for r in rows]
        if trial not in killed:  # its driver survived: every epoch reported once, in one attempt
            assert epochs == [1, 2, 3] and iterations == [1, 2, 3], rows
            continue
        # the retried trial: the first attempt's reports, then the retry's (its iterations count from 1 again),
        # resuming after the checkpoint; nothing reported twice, nothing trained from scratch
        retry = [r for r in rows if r["pid"] != trials[0]["pid"]]
        done_first = [r["epoch"] for r in rows if r["pid"] == trials[0]["pid"]]
        assert retry and retry[0]["training_iteration"] == 1 and [r["epoch"] for r in retry][-1] == 3, rows
        resumed_from = retry[0]["epoch"] - 1  # the checkpoint the retry's Train run restored
        assert done_first[:len(reported.get(trial, []))] == reported.get(trial, [])
        assert epochs == sorted(set(epochs)) and resumed_from >= checkpointed[f"tune-trial-{trial}"] >= 1, \
            (epochs, checkpointed)
        lost = sorted(set(range(1, resumed_from + 1)) - set(done_first))  # checkpointed, never reported to Tune
        print(f"tune: trial {trial} killed after reporting epochs {done_first}, resumed from its epoch-{resumed_from} "
              f"checkpoint; reports lost: {lost}")
        assert len(lost) <= 1
    assert all(latest_checkpoint_epoch(r) == 3 for r in train_runs())
    # the retry ran on the replacement node (the survivor's worker_slot was taken by the other trial, held at the
    # gate): three trial drivers in all, the third there
    drivers = gate.arrivals("trial")
    retries = [d for d in drivers if d["pid"] not in {t["pid"] for t in trials}]
    assert len(drivers) == 3 and [cluster.name_of(d["node_id"]) for d in retries] == [replacement], \
        [(d["pid"], cluster.name_of(d["node_id"])) for d in drivers]
