"""`RetrievalService` without Ray or HTTP: every request check, every mode, replies and start-up refusals
(mrl.service.retrieval). The same requests go over real HTTP in tests/e2e/test_stages.py."""

import numpy as np
import pytest

from mrl.artifacts.index import write_index
from mrl.config import ServeConfig
from mrl.retrieval.modes import SearchSettings
from mrl.retrieval.plan import PlanError
from mrl.retrieval.topk import exact_search
from mrl.service.retrieval import RequestError, RetrievalService

D, N = 64, 400


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(N, D)).astype(np.float32)
    out = tmp_path_factory.mktemp("index")
    write_index(out, np.arange(N) * 10, np.arange(N) % 5, vectors, [8, 16, 64], "flat",
                {"model_uri": "models:/m/3", "model_name": "m", "model_version": "3", "index_run_id": "run-1"},
                adanns=(16, 8))
    return out, vectors


@pytest.fixture(scope="module")
def service(index_dir):
    return RetrievalService.from_path(str(index_dir[0]), ServeConfig())


def test_health_names_model_index_and_modes(service):
    health = service.health()
    assert health["status"] == "ok" and health["rows"] == N and health["dim"] == D
    assert health["modes"] == ["adaptive", "funnel", "adanns", "full"]
    assert health["model"] == {"uri": "models:/m/3", "name": "m", "version": "3"}
    assert health["index"]["version"] == "run-1" and health["index"]["sizes"] == [8, 16, 64]


def test_search_by_id_returns_the_item_first(service):
    reply = service.search({"id": 70, "k": 5})
    assert reply["ids"][0] == 70 and reply["scores"][0] == pytest.approx(1.0, abs=1e-5)
    assert reply["labels"][0] == 7 % 5 and len(reply["ids"]) == 5
    assert reply["search"] == {"mode": "adaptive", "shortlist": {"source": "size_16", "k": 200},
                               "reranks": [[64, 5]], "k": 5}


@pytest.mark.parametrize("mode", ["adaptive", "funnel", "adanns", "full"])
def test_every_mode_with_a_shortlist_of_everything_is_exact(service, index_dir, mode):
    _, vectors = index_dir
    query = np.random.default_rng(1).normal(size=D).astype(np.float32)
    reply = service.search({"vector": query.tolist(), "k": 10, "mode": mode, "shortlist_k": N})
    _, exact = exact_search(vectors, query[None], 10)
    assert reply["ids"] == (exact[0] * 10).tolist()
    assert reply["scores"] == sorted(reply["scores"], reverse=True) and reply["search"]["mode"] == mode


@pytest.mark.parametrize("body, status, message", [
    ({"id": 10, "mode": "fastest"}, 422, "mode 'fastest' is not available on this index; choose one of"),
    ({"vector": [0.1] * 3}, 422, "length 3; this index expects d=64"),
    ({"id": 7}, 404, "id 7 is not in the corpus (400 items)"),
    ({"id": 10, "k": 0}, 422, "k=0 is outside the accepted range [1, 100] (serve.max_k)"),
    ({"id": 10, "k": 101}, 422, "k=101 is outside the accepted range [1, 100] (serve.max_k)"),
    ({"id": 10, "shortlist_k": 401}, 422, "shortlist_k=401 is outside the accepted range [1, 400] (the corpus size)"),
    ({"id": 10, "shortlist_k": 0}, 422, "shortlist_k=0 is outside the accepted range [1, 400]"),
    ({}, 422, "give exactly one of 'vector'"),
    ({"id": 10, "vector": [0.1] * 64}, 422, "give exactly one of 'vector'"),
    ({"vector": [0.0] * 64}, 422, "vector is zero on its first 16 values, the prefix 'adaptive' search"),
    ({"vector": [0.0] * 64, "mode": "full"}, 422, "vector is zero on its first 64 values"),
    ({"vector": [1e39] + [0.1] * 63}, 422, "beyond float32's range"),
])
def test_bad_requests_raise_a_4xx_naming_the_problem(service, body, status, message):
    with pytest.raises(RequestError) as err:
        service.search(body)
    assert err.value.status == status and message in str(err.value.detail)
    assert service.search({"id": 10, "k": 3})["ids"][0] == 10  # and the service keeps answering


@pytest.mark.parametrize("body, field, kind", [
    ({"id": "seven"}, "id", "int_type"),
    ({"id": "10"}, "id", "int_type"),  # strict: a string is not a number, even a numeric one
    ({"id": True}, "id", "int_type"),  # strict: a bool is not an integer
    ({"id": 10, "k": "10"}, "k", "int_type"),
    ({"id": 10, "k": True}, "k", "int_type"),
    ({"vector": ["0.5"] * 64}, "vector", "float_type"),
    ({"id": 10, "colour": "red"}, "colour", "extra_forbidden"),
    ({"vector": [float("nan")] * 64}, "vector", "finite_number"),
    ({"id": 10, "k": 2.5}, "k", "int_type"),
])
def test_malformed_fields_are_named_by_the_request_model(service, body, field, kind):
    with pytest.raises(RequestError) as err:
        service.search(body)
    detail = err.value.detail
    assert err.value.status == 422 and detail[0]["loc"][0] == field and detail[0]["type"] == kind, detail


def test_extreme_but_finite_vectors_search_by_direction(service):
    direction = np.random.default_rng(3).standard_normal(D)
    plain = service.search({"vector": direction.tolist()})["ids"]
    assert service.search({"vector": (direction * 1e20).tolist()})["ids"] == plain  # float32 norms overflow
    assert service.search({"vector": (direction * 1e-30).tolist()})["ids"] == plain  # ... and underflow
    tail = np.concatenate([np.zeros(16), direction[16:]])  # zero on the shortlist prefix: only full search works
    assert len(service.search({"vector": tail.tolist(), "mode": "full"})["ids"]) == 10


def test_start_up_refuses_settings_the_index_cannot_serve(index_dir):
    path = str(index_dir[0])
    with pytest.raises(PlanError, match="serve.mode 'adaptive' cannot run on this index: .*index.sizes must include 32"):
        RetrievalService.from_path(path, ServeConfig(search=SearchSettings(shortlist_size=32)))
    with pytest.raises(PlanError, match="serve.search.rerank_size 128 is above d=64"):
        RetrievalService.from_path(path, ServeConfig(search=SearchSettings(rerank_size=128)))
    # a mode whose source is missing (no index at 32) is simply not offered
    only_full = RetrievalService.from_path(path, ServeConfig(mode="full", search=SearchSettings(shortlist_size=32)))
    assert only_full.health()["modes"] == ["adanns", "full"]  # adanns: cells at 16, members scored at 32


def test_a_batch_answers_each_request_as_alone_and_keeps_errors_apart(service, index_dir):
    """Dynamic batching hands the service many requests at once: same-plan requests share one engine run, and
    every reply equals the reply to that request alone; a bad request fails alone."""
    _, vectors = index_dir
    requests = [{"id": 10 * i, "k": 5} for i in range(6)] + [{"id": 7}, {"id": 20, "mode": "funnel"},
                                                             {"vector": vectors[9].tolist(), "k": 3}]
    replies = service.search_batch(requests)
    assert isinstance(replies[6], RequestError) and replies[6].status == 404
    for request, reply in zip(requests, replies):
        if isinstance(reply, RequestError):
            continue
        alone = service.search(request)
        assert reply["ids"] == alone["ids"] and reply["scores"] == pytest.approx(alone["scores"], abs=1e-6)
    assert replies[0]["batch"] == 6 and replies[7]["batch"] == 1  # the six adaptive k=5 requests ran together


def test_api_key_from_env_or_file_guards_search_not_health(index_dir, tmp_path, monkeypatch):
    import base64

    path = str(index_dir[0])
    key = "s3cret-of-16-chars"
    monkeypatch.setenv("MRL_TEST_KEY", key)
    service = RetrievalService.from_path(path, ServeConfig(api_key_env="MRL_TEST_KEY"))
    assert service.health()["auth"] is True
    service.check_key(f"Bearer {key}")
    service.check_key("Basic " + base64.b64encode(f"browser:{key}".encode()).decode())  # the page's login
    for header in (None, "", "Bearer wrong", key, f"Basic {key}", f"Bearer {key[:-1]}"):
        with pytest.raises(RequestError) as err:
            service.check_key(header)
        assert err.value.status == 401 and "Authorization: Bearer" in err.value.detail
    (tmp_path / "key").write_text("from-file-0123456789\n")
    assert RetrievalService.from_path(path, ServeConfig(api_key_file=str(tmp_path / "key")))._key == "from-file-0123456789"
    (tmp_path / "short").write_text("s3cret\n")
    with pytest.raises(ValueError, match="holds a key of 6 characters; use at least 16"):
        RetrievalService.from_path(path, ServeConfig(api_key_file=str(tmp_path / "short")))
    monkeypatch.delenv("MRL_TEST_KEY")
    with pytest.raises(ValueError, match="api_key_env names MRL_TEST_KEY, which is not set"):
        RetrievalService.from_path(path, ServeConfig(api_key_env="MRL_TEST_KEY"))
    with pytest.raises(ValueError, match="api_key_file .* is missing or empty"):
        RetrievalService.from_path(path, ServeConfig(api_key_file=str(tmp_path / "none")))
    RetrievalService.from_path(path, ServeConfig()).check_key(None)  # no key configured: open


def test_image_queries_are_embedded_by_the_index_model_and_mismatches_refused(tmp_path):
    """An image query is embedded by the model the index was built with, through the same preprocessing as the
    embed stage, so it finds what the image's own embedding finds."""
    import base64
    import io

    from PIL import Image

    from mrl.artifacts.index import load_index
    from mrl.service.encoder import QueryEncoder

    from conftest import tiny_image_index

    model_dir, images, vectors, index = tiny_image_index(tmp_path, 200)
    encoder = QueryEncoder(str(model_dir))
    service = RetrievalService(load_index(index), ServeConfig(search=SearchSettings(shortlist_size=4)), encoder=encoder)
    png = io.BytesIO()
    Image.fromarray(images[17, 0]).save(png, format="PNG")
    reply = service.search({"image": base64.b64encode(png.getvalue()).decode(), "k": 5})
    assert reply["ids"] == service.search({"vector": vectors[17].tolist(), "k": 5})["ids"]
    assert reply["ids"][0] == 17 and service.health()["encoder"] == str(model_dir)
    for body, message in (({"image": "not base64!"}, "not valid base64"),
                          ({"image": base64.b64encode(b"plain text").decode()}, "not a readable image")):
        with pytest.raises(RequestError, match=message):
            service.search(body)
    other = {**encoder.describe(), "model_uri": "models:/other/2"}
    with pytest.raises(ValueError, match="built with model .* but the encoder loads 'models:/other/2'"):
        RetrievalService(service.artifact, ServeConfig(search=SearchSettings(shortlist_size=4)), encoder_info=other)
    with pytest.raises(ValueError, match="d=16 vectors but the encoder's model makes d=32"):
        RetrievalService(service.artifact, ServeConfig(search=SearchSettings(shortlist_size=4)), encoder_info={**encoder.describe(),
                                                                                         "dim": 32})


def test_text_queries_are_embedded_with_the_index_models_tokenizer(tmp_path):
    """A text query is tokenised and embedded by the index's own text model, so it finds what the text's own
    embedding finds; an image sent to a text index, or text to an image index, is a 422 naming the kind."""

    from mrl.artifacts.index import load_index
    from mrl.artifacts.model_files import save_model_dir
    from mrl.service.encoder import QueryEncoder

    from conftest import tiny_text_model

    words = ["cat", "dog", "boat", "river", "stone", "tree", "cloud", "house", "bird", "fish"]
    texts = [f"{a} near the {b} and {c}" for a in words for b in words for c in words[:2]]  # 200 distinct
    model = tiny_text_model(texts)
    model_dir = save_model_dir(model, tmp_path / "model")
    vectors = model.embed_texts(texts)
    write_index(tmp_path / "index", np.arange(200), np.zeros(200, dtype=np.int64), vectors, [4, 16], "flat",
                {"model_uri": str(model_dir), "modality": "text"})
    service = RetrievalService(load_index(tmp_path / "index"), ServeConfig(search=SearchSettings(shortlist_size=4)),
                               encoder=QueryEncoder(str(model_dir)))
    reply = service.search({"text": texts[42], "k": 3})
    assert reply["ids"] == service.search({"vector": vectors[42].tolist(), "k": 3})["ids"]
    assert reply["ids"][0] == 42 and service.health()["queries"] == ["vector", "id", "text"]
    with pytest.raises(RequestError, match="reads text, not image"):
        service.search({"image": "aGVsbG8="})
    with pytest.raises(RequestError, match="exactly one of"):
        service.search({"text": "cat", "id": 3})
    with pytest.raises(RequestError, match="at most 4000 characters"):
        service.search({"text": "x" * 4001})
    with pytest.raises(RequestError, match="at least 1 character"):
        service.search({"text": ""})
    with pytest.raises(ValueError, match="holds image embeddings but the encoder's model reads text"):
        image_index = load_index(tmp_path / "index")
        image_index.manifest.pop("modality")
        RetrievalService(image_index, ServeConfig(search=SearchSettings(shortlist_size=4)), encoder=QueryEncoder(str(model_dir)))


def test_budgets_pick_plans_from_the_calibration_table(index_dir, tmp_path):
    """Different budgets run different plans (the reply says which and what was calibrated); an index without a
    table, or a budget beside mode / shortlist_k, is a 422."""
    import shutil

    from mrl.artifacts.index import load_index
    from mrl.artifacts.manifest import read_manifest, write_manifest

    path = tmp_path / "calibrated"
    shutil.copytree(index_dir[0], path)
    manifest = read_manifest(path)
    table = {"k": 10, "queries": 50, "rows": [
        {"setting": {"mode": "adaptive", "shortlist_size": 8, "shortlist_k": 20}, "recall": 0.7, "p50_ms": 0.1},
        {"setting": {"mode": "adaptive", "shortlist_size": 16, "shortlist_k": 200}, "recall": 0.98, "p50_ms": 0.5},
        {"setting": {"mode": "full"}, "recall": 1.0, "p50_ms": 2.0}]}
    write_manifest(path, {**manifest, "calibration": table})
    service = RetrievalService(load_index(path), ServeConfig(search=SearchSettings(shortlist_size=8)))
    fast = service.search({"id": 10, "budget": {"latency_ms": 0.2}})
    exact = service.search({"id": 10, "budget": {"recall": 0.99}})
    assert fast["search"]["shortlist"] == {"source": "size_8", "k": 20} and fast["budget"]["met"]
    assert exact["search"]["mode"] == "full" and exact["budget"]["calibrated"]["recall"] == 1.0
    assert service.search({"id": 10, "budget": {"latency_ms": 0.01}})["budget"]["met"] is False
    assert service.health()["budgets"] == {"latency_ms": [0.1, 2.0], "recall": [0.7, 1.0], "at_k": 10, "plans": 3}
    for body, message in (({"id": 10, "budget": {"recall": 0.9}, "mode": "full"}, "either budget or mode"),
                          ({"id": 10, "budget": {}}, "exactly one of 'latency_ms' or 'recall'"),
                          ({"id": 10, "budget": {"recall": 0.9, "latency_ms": 1}}, "exactly one of"),
                          ({"id": 10, "budget": {"recall": 1.5}}, "less than or equal to 1"),
                          ({"id": 10, "budget": {"latency_ms": -1}}, "greater than 0"),
                          ({"id": 10, "budget": {"speed": 1}}, "Extra inputs")):
        with pytest.raises(RequestError, match=message):
            service.search(body)
    plain = RetrievalService(load_index(index_dir[0]), ServeConfig(search=SearchSettings(shortlist_size=8)))
    assert plain.health()["budgets"] is None
    with pytest.raises(RequestError, match="no calibration table"):
        plain.search({"id": 10, "budget": {"recall": 0.9}})


def test_the_service_answers_through_a_binary_shortlist_and_code_stages(tmp_path):
    """A memory-lean index (a binary graph on the 32-d prefix's sign bits, binary codes of 64 and int8 codes of
    32 in memory, the full vectors memory-mapped): the service runs the configured funnel through them, and with
    a shortlist of everything its answer is exact search's."""
    from mrl.configio import from_dict
    from mrl.retrieval.indexes import index_bytes

    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(N, D)).astype(np.float32)
    write_index(tmp_path / "lean", np.arange(N) * 10, np.arange(N) % 5, vectors, [32], "binary_hnsw",
                {"model_uri": "models:/m/3", "index_run_id": "run-lean"}, codes=[(64, "binary"), (32, "int8")])
    cfg = from_dict(ServeConfig, {"mode": "funnel", "search": {
        "shortlist_size": 32, "shortlist_k": N, "ef_search": N,
        "funnel": [[64, N, "binary"], [32, N, "int8"], [None, 10]]}})
    service = RetrievalService.from_path(str(tmp_path / "lean"), cfg)
    health = service.health()
    assert health["index"]["kind"] == "binary_hnsw" and health["index"]["codes"] == [[64, "binary"], [32, "int8"]]
    memory = health["memory"]
    assert memory["vector_file_bytes"] == N * D * 4 and memory["process_rss_anon_bytes"] > 0
    assert memory["structures_bytes"] == pytest.approx(memory["bytes_per_vector"] * N)
    graph = index_bytes(service.engine.sources["size_32"].index)
    assert memory["structures_bytes"] == graph + N * (64 // 8) + N * 32 + 32 * 4  # graph and codes, no float rows
    query = rng.normal(size=D).astype(np.float32)
    reply = service.search({"vector": query.tolist(), "k": 10})
    assert reply["search"]["reranks"] == [[64, N, "binary"], [32, N, "int8"], [64, 10]]
    assert reply["vector_bytes"] == N * D * 4  # the float stage read every kept row's 64 float32 values
    assert reply["search"]["shortlist"]["source"] == "size_32"
    _, exact = exact_search(vectors, query[None], 10)
    assert reply["ids"] == (exact[0] * 10).tolist()
    narrow = service.search({"vector": query.tolist(), "k": 10, "shortlist_k": 40})  # keeps clipped into [k, K]
    assert narrow["search"]["reranks"] == [[64, 40, "binary"], [32, 40, "int8"], [64, 10]]
    with pytest.raises(PlanError, match=r"\['int8@64'\], which this index lacks"):
        RetrievalService.from_path(str(tmp_path / "lean"), from_dict(ServeConfig, {"mode": "funnel", "search": {
            "shortlist_size": 32, "funnel": [[64, 100, "int8"], [None, 10]]}}))
