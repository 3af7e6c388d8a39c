"""A sharded index served over real HTTP (Ray Serve on 127.0.0.1): 4 Shard deployments of 2 replicas each behind
the Retriever, against the same vectors as one whole index searched in process. Exact answers are the whole
index's; adaptive answers are the per-shard plan's merged; a killed shard replica costs no request; a shard with
no replica gives 503 or a flagged partial answer by config; a hot swap never mixes versions in a reply."""

import threading
import time

import numpy as np
import pytest
import requests

from mrl.retrieval.modes import SearchSettings, make_plan

from conftest import free_port

pytestmark = pytest.mark.slow
ROWS, DIM = 600, 32


def vectors():
    v = np.random.default_rng(0).normal(size=(ROWS, DIM)).astype(np.float32)
    v[500:520] = v[:20]  # exact duplicates (in other shards): ties by the lower id
    return v


def cfg(port: int, **kw):
    from mrl.config import ServeConfig

    return ServeConfig(port=port, encoder=False, shard_replicas=2, shard_cpus=0.1, shard_timeout_s=5.0,
                       search=SearchSettings(shortlist_size=8, shortlist_k=60), **kw)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    import ray
    from ray import serve

    from mrl.artifacts.index import write_index, write_sharded_index
    from mrl.service.app import deploy

    root = tmp_path_factory.mktemp("sharded")
    ids, labels = np.arange(ROWS) * 3, np.arange(ROWS) % 5
    write_index(root / "whole", ids, labels, vectors(), [8, 32], "flat", {"index_run_id": "v1"})
    write_sharded_index(root / "v1", ids, labels, vectors(), [8, 32], "flat", {"index_run_id": "v1"}, shards=4,
                        by="hash", rule="split")
    port = free_port()
    ray.init(address="local", num_cpus=4)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    apps = deploy(str(root / "v1"), cfg(port), name="mrl")
    yield f"http://127.0.0.1:{port}", root, apps
    serve.shutdown()
    ray.shutdown()


def search(url, body, path=""):
    return requests.post(f"{url}{path}/search", json=body, timeout=60)


def test_exact_answers_are_the_whole_index_and_adaptive_the_merged_per_shard_plan(sharded):
    from mrl.artifacts.index import load_index, load_shard
    from mrl.retrieval.sharded import ShardedEngine, shard_hits

    url, root, apps = sharded
    assert apps == ["mrl", *(f"mrl-v1-shard{i}" for i in range(4))]
    whole = load_index(root / "whole")
    reference = ShardedEngine([load_shard(root / "v1", i) for i in range(4)], rule="split")
    queries = np.random.default_rng(1).normal(size=(12, DIM)).astype(np.float32)
    queries[:3] = vectors()[:3]
    replies = [search(url, {"vector": q.tolist(), "mode": "full", "k": 10}).json() for q in queries]
    exact = shard_hits(whole, make_plan("full", SearchSettings(), DIM, 10), queries)
    assert [r["ids"] for r in replies] == exact.ids.tolist()
    assert replies[0]["ids"][:2] == [0, 1500]
    assert replies[0]["shards"] == {"answered": 4, "of": 4, "missing": [], "rule": "split", "shortlist_k": 10}
    assert [r["labels"] for r in replies] == exact.labels.tolist() and not replies[0]["partial"]
    adaptive = make_plan("adaptive", SearchSettings(shortlist_size=8, shortlist_k=60), DIM, 10)
    assert [search(url, {"vector": q.tolist(), "k": 10}).json()["ids"] for q in queries] == \
        reference.hits(adaptive, queries).ids.tolist()
    by_id = search(url, {"id": 9, "k": 3, "mode": "full"}).json()
    assert by_id["ids"][0] == 9 and search(url, {"id": 10}).status_code == 404  # ids are multiples of 3


def test_health_lists_every_shard(sharded):
    url, _, _ = sharded
    health = requests.get(f"{url}/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["index"]["shards"]["count"] == 4
    assert [s["shard"] for s in health["shards"]] == [0, 1, 2, 3]
    assert sum(s["rows"] for s in health["shards"]) == ROWS and {s["version"] for s in health["shards"]} == {"v1"}
    assert all(s["structures_bytes"] > 0 and s["process_rss_anon_bytes"] > 0 for s in health["shards"])


def test_a_killed_shard_replica_costs_no_request(sharded):
    import ray
    from ray.util import list_named_actors

    url, _, _ = sharded
    statuses, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            statuses.append(search(url, {"id": 3 * np.random.randint(ROWS), "k": 5}).status_code)

    clients = [threading.Thread(target=load) for _ in range(4)]
    for c in clients:
        c.start()
    time.sleep(1.0)
    victims = sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                     if a["namespace"] == "serve" and "mrl-v1-shard2#Shard" in a["name"])
    assert len(victims) == 2, victims
    ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)
    time.sleep(3.0)
    stop.set()
    for c in clients:
        c.join(timeout=60)
    assert len(statuses) > 20 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_a_shard_without_replicas_fails_or_answers_partially_by_config(sharded):
    from ray import serve

    from mrl.service.app import build_app

    url, root, apps = sharded
    port = int(url.rsplit(":", 1)[1])
    serve.run(build_app(str(root / "v1"), cfg(port, on_missing_shard="partial"), shard_apps=apps[1:]),
              name="mrl-partial", route_prefix="/partial", blocking=False)
    serve.delete("mrl-v1-shard3")
    try:
        failed = search(url, {"vector": [1.0] * DIM})
        assert failed.status_code == 503 and "shards [3] of 4 did not answer" in failed.text
        partial = search(url, {"vector": [1.0] * DIM, "mode": "full"}, path="/partial").json()
        assert partial["partial"] and partial["shards"]["answered"] == 3 and partial["shards"]["missing"] == [3]
        assert len(partial["ids"]) == 10
        health = requests.get(f"{url}/healthz", timeout=30).json()
        assert health["status"] == "degraded" and health["shards"][3]["status"] == "missing"
    finally:
        from mrl.service.app import build_shard_app

        serve.delete("mrl-partial")
        serve.run(build_shard_app(str(root / "v1"), 3, cfg(port), "mrl-v1-shard3"), name="mrl-v1-shard3",
                  route_prefix=None, blocking=False)
    assert search(url, {"vector": [1.0] * DIM}).status_code == 200


# last: it swaps the service to another index version
def test_hot_swap_to_a_new_sharded_version_never_mixes_versions(sharded):
    from ray import serve

    from mrl.artifacts.index import write_sharded_index
    from mrl.service.app import deploy

    url, root, _ = sharded
    ids = np.arange(ROWS) * 3
    write_sharded_index(root / "v2", ids, ids % 5, vectors()[::-1].copy(), [8, 32], "flat", {"index_run_id": "v2"},
                        shards=2, by="range")
    replies, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            reply = search(url, {"id": 3, "k": 3, "mode": "full"})
            replies.append((reply.status_code, reply.json()["index"]["version"] if reply.ok else reply.text,
                            reply.json()["ids"] if reply.ok else None))

    clients = [threading.Thread(target=load) for _ in range(3)]
    for c in clients:
        c.start()
    time.sleep(1.0)
    port = int(url.rsplit(":", 1)[1])
    apps = deploy(str(root / "v2"), cfg(port), name="mrl")
    time.sleep(1.0)
    stop.set()
    for c in clients:
        c.join(timeout=60)
    assert apps == ["mrl", "mrl-v2-shard0", "mrl-v2-shard1"]
    assert {status for status, *_ in replies} == {200}, [r for r in replies if r[0] != 200][:3]
    versions = [v for _, v, _ in replies]
    assert versions[-1] == "v2" and set(versions) == {"v1", "v2"}
    # each reply is its version's answer throughout (a mixed merge would name one version with the other's rows)
    expected = {}
    for version, v in (("v1", vectors()), ("v2", vectors()[::-1])):
        unit = v / np.linalg.norm(v, axis=1, keepdims=True)
        expected[version] = (ids[np.argsort(-(unit @ unit[1]), kind="stable")[:3]]).tolist()
    assert expected["v1"] != expected["v2"]
    assert all(found == expected[version] for _, version, found in replies), \
        [(version, found) for _, version, found in replies if found != expected[version]][:3]
    assert not any(name.startswith("mrl-v1-") for name in serve.status().applications)  # old shards deleted
    reply = search(url, {"id": 3, "k": 3, "mode": "full"}).json()
    assert reply["shards"]["of"] == 2 and reply["ids"] == expected["v2"]
