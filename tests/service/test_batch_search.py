"""POST /search with many queries, without Ray or HTTP: a batch of single requests or one binary matrix is
answered query by query exactly as the single requests would be, one bad query fails alone with its position and
reason, and a batch malformed as a whole is refused naming what is wrong."""

import base64

import numpy as np
import pytest

from mrl.artifacts.index import write_index
from mrl.config import ServeConfig
from mrl.retrieval.modes import SearchSettings
from mrl.service.retrieval import RequestError, RetrievalService

D, N = 32, 300


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    vectors = np.random.default_rng(1).normal(size=(N, D)).astype(np.float32)
    out = tmp_path_factory.mktemp("index")
    write_index(out, np.arange(N) * 10, np.arange(N) % 3, vectors, [8, 32], "flat", {"model_uri": "models:/m/1"})
    cfg = ServeConfig(max_batch_queries=16, max_k=20, search=SearchSettings(shortlist_size=8))
    return RetrievalService.from_path(str(out), cfg), vectors


def matrix(rows: np.ndarray, dtype: str = "float32") -> dict:
    data = rows.astype("<f4" if dtype == "float32" else "<f2").tobytes()
    return {"dtype": dtype, "shape": list(rows.shape), "data": base64.b64encode(data).decode()}


def hits(reply: dict) -> tuple[list, list]:
    return reply["ids"], reply["labels"]


def test_a_batch_of_queries_answers_each_as_alone_and_keeps_errors_apart(service):
    svc, vectors = service
    queries = [{"id": 30}, {"vector": vectors[7].tolist(), "mode": "full"}, {"id": 30, "k": 999},
               {"id": "30"}, {"id": 12345}, {"vector": vectors[3].tolist(), "k": 3}]
    reply = svc.search_many({"queries": queries, "k": 5})
    assert [r.get("index") for r in reply["results"]] == [None, None, 2, 3, 4, None] and reply["failed"] == 3
    for i in (0, 1, 5):
        alone = svc.search({"k": 5, **queries[i]})
        assert hits(reply["results"][i]) == hits(alone) and reply["results"][i]["search"] == alone["search"]
    assert len(reply["results"][5]["ids"]) == 3  # a query's own k wins over the batch's
    assert reply["results"][2]["status"] == 422 and "k=999 is outside" in reply["results"][2]["detail"]
    assert reply["results"][3]["status"] == 422 and "valid integer" in str(reply["results"][3]["detail"])
    assert reply["results"][4]["status"] == 404
    assert reply["model"]["uri"] == "models:/m/1" and reply["index"]["rows"] == N


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_binary_matrix_answers_like_the_same_vectors_sent_one_by_one(service, dtype):
    svc, vectors = service
    rows = vectors[:12] * 3.0
    sent = rows.astype(np.float16).astype(np.float32) if dtype == "float16" else rows
    reply = svc.search_many({"vectors": matrix(rows, dtype), "k": 4, "mode": "adaptive"})
    assert reply["failed"] == 0 and len(reply["results"]) == 12
    for i, result in enumerate(reply["results"]):
        alone = svc.search({"vector": sent[i].tolist(), "k": 4, "mode": "adaptive"})
        assert hits(result) == hits(alone)
        assert np.allclose(result["scores"], alone["scores"], atol=1e-5)


def test_a_batch_budget_applies_to_queries_without_a_plan_of_their_own(service):
    svc, vectors = service
    reply = svc.search_many({"queries": [{"id": 10}, {"id": 10, "mode": "full"}], "mode": "adaptive"})
    assert [r["search"]["mode"] for r in reply["results"]] == ["adaptive", "full"]


@pytest.mark.parametrize("body, message", [
    ({"queries": []}, r"holds 0 queries; the accepted range is \[1, 16\] \(serve.max_batch_queries\)"),
    ({"queries": [{"id": 10}] * 17}, r"holds 17 queries"),
    ({}, "exactly one of 'queries'"),
    ({"queries": [{"id": 10}], "vectors": {"dtype": "float32", "shape": [1, D], "data": ""}}, "exactly one of"),
    ({"vectors": {"dtype": "float32", "shape": [2, 16], "data": ""}}, r"shape is \[2, 16\]; this index expects d=32"),
    ({"vectors": {"dtype": "float32", "shape": [2, D], "data": base64.b64encode(b"x" * 12).decode()}},
     "holds 12 bytes; shape \\[2, 32\\] of float32 needs 256"),
    ({"vectors": {"dtype": "float32", "shape": [1, D], "data": "not base64!"}}, "not valid base64"),
    ({"vectors": {"dtype": "float64", "shape": [1, D], "data": ""}}, "dtype"),
    ({"vectors": {"dtype": "float32", "shape": [1], "data": ""}}, "shape"),
])
def test_a_malformed_batch_is_refused_as_a_whole_naming_the_problem(service, body, message):
    svc, _ = service
    with pytest.raises(RequestError, match=message) as refused:
        svc.search_many(body)
    assert refused.value.status == 422


def test_a_matrix_with_nan_or_infinity_names_the_rows(service):
    svc, vectors = service
    rows = vectors[:4].copy()
    rows[1, 0], rows[3, 5] = np.nan, np.inf
    with pytest.raises(RequestError, match=r"vectors rows \[1, 3\] hold NaN or infinity"):
        svc.search_many({"vectors": matrix(rows)})
