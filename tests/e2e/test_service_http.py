"""The retrieval service over real HTTP (Ray Serve on 127.0.0.1) with an API key, limits and dynamic
batching, on a small index: what only the HTTP layer does (401, 413, strict JSON types, batches)."""

import concurrent.futures

import numpy as np
import pytest
import requests

from mrl.retrieval.modes import SearchSettings

from conftest import free_port

pytestmark = pytest.mark.slow
KEY = "test-key-not-a-secret"
TABLE = {"k": 10, "queries": 100, "rows": [  # a calibration table fixed by hand: budgets must pick by it
    {"setting": {"mode": "adaptive", "shortlist_size": 8, "shortlist_k": 20}, "recall": 0.6, "p50_ms": 0.1},
    {"setting": {"mode": "adaptive", "shortlist_size": 8, "shortlist_k": 100}, "recall": 0.9, "p50_ms": 0.3},
    {"setting": {"mode": "full"}, "recall": 1.0, "p50_ms": 1.0}]}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    import ray
    from ray import serve

    from mrl.artifacts.index import write_index
    from mrl.config import ServeConfig
    from mrl.service.app import build_app

    index = tmp_path_factory.mktemp("index")
    vectors = np.random.default_rng(0).normal(size=(500, 32)).astype(np.float32)
    write_index(index, np.arange(500), np.arange(500) % 4, vectors, [8, 32], "flat", {"calibration": TABLE})
    (index.parent / "key").write_text(KEY + "\n")
    port = free_port()
    ray.init(address="local", num_cpus=4)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServeConfig(port=port, api_key_file=str(index.parent / "key"), max_k=20, max_body_bytes=4000, max_batch_queries=8, batch_max_size=16, batch_wait_ms=20.0, search=SearchSettings(shortlist_size=8))
    serve.run(build_app(str(index), cfg), name="mrl", route_prefix="/", blocking=False)
    yield f"http://127.0.0.1:{port}", vectors
    serve.shutdown()
    ray.shutdown()


def post(url, body, key=KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{url}/search", json=body, headers=headers, timeout=30, **kwargs)


def test_every_route_but_health_needs_the_key(service):
    url, _ = service
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}  # a probe learns nothing more
    assert requests.get(f"{url}/healthz", headers=bearer, timeout=30).json()["auth"] is True
    for key in (None, "wrong"):
        resp = post(url, {"id": 3}, key=key)
        assert resp.status_code == 401 and "Authorization: Bearer" in resp.text
    # refused from the headers: a malformed body is not parsed, so its problems are not reported to a stranger
    resp = requests.post(f"{url}/search", data=b'{"id": "not json', timeout=30)
    assert resp.status_code == 401 and "id" not in resp.json()["detail"]
    for path in ("/docs", "/redoc", "/openapi.json", "/items/3", "/calibration", "/v1/models", "/no-such-route"):
        assert requests.get(f"{url}{path}", timeout=30).status_code == 401, path
    assert requests.get(f"{url}/docs", headers=bearer, timeout=30).status_code == 200
    assert post(url, {"id": 3}).json()["ids"][0] == 3


@pytest.mark.parametrize("body, message", [
    ({"id": "3"}, "valid integer"),
    ({"id": True}, "valid integer"),
    ({"id": 3, "k": "10"}, "valid integer"),
    ({"vector": ["0.5"] * 32}, "valid number"),
    ({"id": 3, "k": 21}, "k=21 is outside the accepted range [1, 20] (serve.max_k)"),
    ({"id": 3, "mode": ""}, "at least 1 character"),  # an empty enumerated field is not the default
])
def test_strict_types_and_bounds_get_422_naming_the_field(service, body, message):
    url, _ = service
    resp = post(url, body)
    assert resp.status_code == 422 and message in resp.text, resp.text
    assert post(url, {"id": 4}).status_code == 200


def test_a_body_above_the_limit_gets_413_before_it_is_read(service):
    url, _ = service
    resp = post(url, {"vector": [0.123456789] * 400})  # ~5 kB of JSON, above max_body_bytes=4000
    assert resp.status_code == 413 and "serve.max_body_bytes" in resp.text
    assert post(url, {"id": 5}).status_code == 200


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(service):
    url, vectors = service

    def one(i):
        return post(url, {"vector": vectors[i].tolist(), "k": 3}).json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:  # a bounded burst: 96 requests on loopback
        replies = list(pool.map(one, range(96)))
    assert [r["ids"][0] for r in replies] == list(range(96))
    assert max(r["batch"] for r in replies) > 1  # Ray Serve handed the service several requests at once


def test_openapi_page_documents_the_request_fields(service):
    url, _ = service
    schema = requests.get(f"{url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    fields = schema["components"]["schemas"]["SearchRequest"]["properties"]
    assert {"vector", "id", "k", "shortlist_k", "mode"} <= set(fields)
    assert "serve.max_k" in fields["k"]["description"]
    assert requests.get(f"{url}/docs", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).status_code == 200


def test_budgets_choose_different_plans_over_http(service):
    url, _ = service
    replies = {name: post(url, {"id": 3, "budget": budget}).json() for name, budget in (
        ("fast", {"latency_ms": 0.2}), ("middle", {"recall": 0.85}), ("exact", {"recall": 1.0}))}
    assert replies["fast"]["search"]["shortlist"] == {"source": "size_8", "k": 20}
    assert replies["middle"]["search"]["shortlist"] == {"source": "size_8", "k": 100}
    assert replies["exact"]["search"]["mode"] == "full" and replies["exact"]["budget"]["calibrated"]["recall"] == 1.0
    assert all(r["budget"]["met"] and r["ids"][0] == 3 for r in replies.values())
    late = post(url, {"id": 3, "budget": {"latency_ms": 0.01}}).json()
    assert late["budget"]["met"] is False and late["search"]["shortlist"]["k"] == 20  # the fastest, flagged
    assert post(url, {"id": 3, "budget": {"recall": 0.9}, "mode": "full"}).status_code == 422


# runs last: it replaces the deployed index (with one that has no calibration table)
def test_the_openai_client_sends_the_api_key(service):
    """/v1/embeddings is behind the key like /search: the `openai` client's api_key is the service's key. This
    index's service has no model, so with the key the answer is 404 (nothing to embed with), without it 401."""
    import openai

    url, _ = service
    assert requests.post(f"{url}/v1/embeddings", json={"model": "m", "input": "x"}, timeout=30).status_code == 401
    keyed = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=30)
    assert keyed.models.list().data == []
    with pytest.raises(openai.NotFoundError, match="embeds nothing"):
        keyed.embeddings.create(model="m", input="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-key-of-enough-length", max_retries=0,
                      timeout=30).embeddings.create(model="m", input="x")


def test_batches_as_json_or_binary_answer_like_single_requests(service):
    """POST /search with `queries` or a `vectors` matrix over HTTP: each result equals the single request's, in
    order; a bad query fails alone with its position; a batch above serve.max_batch_queries is a 422, one above
    the body limit a 413, and without the key a 401."""
    import base64

    url, vectors = service
    rows = vectors[[3, 50, 99, 250]] * 2.0  # any vectors: each is compared with the same vector sent alone
    singles = [post(url, {"vector": row.tolist(), "k": 5}).json() for row in rows]
    matrix = {"dtype": "float32", "shape": [4, 32], "data": base64.b64encode(rows.astype("<f4").tobytes()).decode()}
    binary = post(url, {"vectors": matrix, "k": 5})
    assert binary.status_code == 200, binary.text
    assert [r["ids"] for r in binary.json()["results"]] == [s["ids"] for s in singles]
    mixed = post(url, {"queries": [{"id": 3}, {"id": 3, "k": 99}, {"id": 50}], "k": 5})
    assert mixed.status_code == 200 and mixed.json()["failed"] == 1
    results = mixed.json()["results"]
    # by id, against single requests by id (a test above may have swapped the index: ids, not `vectors`)
    assert [results[0]["ids"], results[2]["ids"]] == [post(url, {"id": i, "k": 5}).json()["ids"] for i in (3, 50)]
    assert results[1]["index"] == 1 and results[1]["status"] == 422 and "k=99" in results[1]["detail"]
    too_many = post(url, {"queries": [{"id": i} for i in range(9)]})
    assert too_many.status_code == 422 and "serve.max_batch_queries" in too_many.text
    assert post(url, {"queries": [{"id": i} for i in range(600)]}).status_code == 413
    assert post(url, {"vectors": matrix}, key=None).status_code == 401
    assert requests.get(f"{url}/healthz", headers={"Authorization": f"Bearer {KEY}"},
                        timeout=30).json()["limits"]["max_batch_queries"] == 8


# last: it redeploys the service with another index and config
def test_hot_swap_to_a_new_index_loses_no_request(service, tmp_path):
    """Redeploying the app over another index version under a short bounded load: every request answers 200,
    each reply names one index version, and once the swap is done only the new one answers. The new version is a
    memory-lean one (a binary graph on the 8-d prefix's sign bits, binary and int8 codes, float rows read from
    the memory-mapped file): its funnel answers over HTTP exactly as the engine runs it in process."""
    import threading
    import time

    from ray import serve

    from mrl.artifacts.index import write_index
    from mrl.config import ServeConfig
    from mrl.retrieval.indexes import IndexParams
    from mrl.service.app import build_app

    url, vectors = service
    write_index(tmp_path, np.arange(500), np.arange(500) % 4, vectors, [8], "binary_hnsw", {"index_run_id": "v2"},
                IndexParams(hnsw_m=8), codes=[(32, "binary"), (16, "int8")])
    statuses, versions, stop = [], [], threading.Event()

    def load():
        while not stop.is_set():
            resp = post(url, {"id": 1, "k": 3})
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                versions.append(resp.json()["index"]["version"])

    clients = [threading.Thread(target=load) for _ in range(4)]
    for c in clients:
        c.start()
    time.sleep(1.0)
    port = int(url.rsplit(":", 1)[1])
    cfg = ServeConfig(port=port, api_key_file=str(tmp_path.parent / "key"), max_k=20, max_shortlist_k=500,
                      search=SearchSettings(shortlist_size=8, funnel=((32, 100, "binary"), (16, 40, "int8"),
                                                                      (None, 10))))
    (tmp_path.parent / "key").write_text(KEY + "\n")
    serve.run(build_app(str(tmp_path), cfg), name="mrl", route_prefix="/", blocking=False)  # waits for the new replica
    time.sleep(2.0)
    stop.set()
    for c in clients:
        c.join(timeout=60)
    assert len(statuses) > 20 and set(statuses) == {200}, sorted(set(statuses))
    assert versions[-1] == "v2" and set(versions) <= {versions[0], "v2"}
    assert post(url, {"id": 1}).json()["index"]["version"] == "v2"
    from mrl.artifacts.index import load_index
    from mrl.retrieval.modes import make_plan

    query = np.random.default_rng(5).normal(size=32).astype(np.float32)
    reply = post(url, {"vector": query.tolist(), "mode": "funnel", "shortlist_k": 300}).json()
    assert reply["search"]["shortlist"]["source"] == "size_8"
    assert reply["search"]["reranks"] == [[32, 100, "binary"], [16, 40, "int8"], [32, 10]]
    engine = load_index(tmp_path).engine
    plan = make_plan("funnel", SearchSettings(shortlist_size=8, shortlist_k=300, funnel=cfg.search.funnel), 32, 10)
    assert reply["ids"] == engine.run(plan, query[None]).positions[0].tolist()  # ids are positions here
    memory = requests.get(f"{url}/healthz", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()["memory"]
    assert memory["vector_file_bytes"] == 500 * 32 * 4 and memory["bytes_per_vector"] < 32 * 4 * 2
