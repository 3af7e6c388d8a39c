"""End to end on a small slice of Fashion-MNIST: the pipeline through real Ray Train, Ray Data, FAISS,
Ray Serve over HTTP and MLflow in a temp dir, then probes of every artifact and of the HTTP API."""

import contextlib
import os
import re
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from mlflow import MlflowClient

from mrl.config import PipelineConfig
from mrl.configio import load_config

from conftest import REPO, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    import ray
    from ray import serve

    from mrl.stages.pipeline import run as run_pipeline

    out = tmp_path_factory.mktemp("pipeline")
    port = free_port()
    cfg = load_config(PipelineConfig, REPO / "jobs" / "pipeline.yaml", [
        f"output_dir={out}", "run_name=e2e", "data.train_limit=3000", "data.test_limit=600", "train.epochs=2",
        "model.dim=64", f"serve.port={port}", "embed.rows_per_file=1000", "ray.num_cpus=8",
        "serve.max_shortlist_k=3000"])  # lets tests shortlist the whole 3,000-row corpus
    with printed_to(out / "printed.txt"):  # what a user of the pipeline would see (test_the_run_prints_...)
        summary = run_pipeline(cfg, shutdown=False)
    yield cfg, summary
    serve.shutdown()
    ray.shutdown()


@contextlib.contextmanager
def printed_to(path):
    """Everything this process prints while the block runs, at both levels (file descriptors 1 and 2, which C++ code
    and child processes write to, and sys.stdout / sys.stderr, which pytest replaces), into `path`."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a", buffering=1) as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def runs_by_stage(cfg):
    client = MlflowClient(f"sqlite:///{cfg.output_dir}/mlflow.db")
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id])
    return client, {r.data.tags.get("mrl.stage"): r for r in runs}


# What the pipeline prints by default: the platform's own lines (banner, stage headers, lines tagged [stage], from
# the driver or a Ray worker, tables, the summary) and warnings a user can act on; Ray's, MLflow's and the workers'
# other output goes to <output_dir>/logs/pipeline-<time>.log.
OWN_LINES = re.compile("|".join([
    r"", r"=== \w+ ===", r"\[[a-z]+\] .*",  # a worker's [train] lines too: printed without Ray's worker prefix
    r"\|.*\|", r"model models:/.*, index .*", r"per-size metrics: the evaluate table above, also in .*",
    r"full size d=\d+: .*", r"MLflow store: .*", r"  open the UI with: .*", r"example query: POST .*",
    r"  answered ids .*", r"  by model .*", r"  the same by corpus id: curl .*", r"stage seconds .*",
]))
ACTIONABLE = [  # warnings this small run earns and a user could act on
    re.compile(r"WARNING clustering 3000 points to \d+ centroids: please provide at least \d+ training points"),
]


def test_the_run_prints_the_platforms_lines_and_logs_the_rest(pipeline):
    cfg, summary = pipeline
    lines = (Path(cfg.output_dir) / "printed.txt").read_text().splitlines()
    foreign = [line for line in lines if not OWN_LINES.fullmatch(line) and not any(p.search(line) for p in ACTIONABLE)]
    assert not foreign, "\n".join(foreign)
    assert 40 <= len(lines) <= 60, "\n".join(lines)
    logs = list((Path(cfg.output_dir) / "logs").glob("pipeline-*.log"))
    assert len(logs) == 1 and f"output: {logs[0]} (log_level=debug or --verbose" in lines[0], lines[0]
    assert sum("[train] epoch 2/2 step" in line for line in lines) >= 3  # rank 0's progress, relayed by Ray
    assert not any("recall@" in line for line in lines)  # ~0.17% at best: logged, not printed
    logged = logs[0].read_text()
    for noise in ["Checkpoint successfully created", "core_worker.cc", "Failed to infer model signature"]:
        assert noise in logged, noise


def test_per_size_quality_beats_chance_at_every_size(pipeline):
    _, summary = pipeline
    rows = summary["per_size"]
    assert [r["size"] for r in rows] == [8, 16, 32, 64]
    for row in rows:  # 10 classes: chance is 0.1; 2 epochs on 2,850 images gets well above it
        assert row["top1"] > 0.5 and row["nn1"] > 0.5 and row["map@10"] > 0.4, row


def test_lineage_chain_in_mlflow(pipeline):
    cfg, summary = pipeline
    client, runs = runs_by_stage(cfg)
    assert {"train", "embed", "index", "evaluate", "serve"} <= set(runs)
    train, embed, index = runs["train"], runs["embed"], runs["index"]
    assert embed.data.tags["mrl.input_run_id"] == train.info.run_id
    assert embed.data.tags["mrl.input_uri"] == summary["model_uri"]
    assert index.data.tags["mrl.input_run_id"] == embed.info.run_id
    assert runs["evaluate"].data.tags["mrl.input_run_id"] == embed.info.run_id
    assert runs["serve"].data.tags["mrl.input_run_id"] == index.info.run_id
    # per-epoch validation accuracy per size was logged by rank 0 during training
    history = client.get_metric_history(train.info.run_id, "val_top1_d8")
    assert [m.step for m in history] == [1, 2]
    assert runs["evaluate"].data.metrics["top1_d64"] == pytest.approx(summary["per_size"][-1]["top1"])


def test_registered_model_carries_dim_and_sizes(pipeline):
    cfg, summary = pipeline
    from mrl.artifacts import tracking

    tracking.setup(cfg.mlflow, cfg.output_dir)
    name, version = summary["model_uri"].split("/")[1:]
    mv = MlflowClient().get_model_version(name, version)
    info = mlflow.models.get_model_info(summary["model_uri"])
    assert info.metadata["dim"] == 64 and info.metadata["sizes"] == [8, 16, 32, 64]
    assert mv.run_id == summary["train_run_id"]
    model = tracking.load_model(summary["model_uri"])
    assert model.dim == 64 and model.sizes == [8, 16, 32, 64]


def test_embeddings_are_the_models_embeddings(pipeline):
    import torch

    from mrl.artifacts import tracking
    from mrl.artifacts.embeddings import read_embeddings
    from mrl.artifacts.manifest import read_manifest
    from mrl.data.formats import to_float
    from mrl.data.sources import load_split

    cfg, summary = pipeline
    emb_dir = f"{cfg.output_dir}/embeddings/{summary['embed_run_id']}"
    manifest = read_manifest(emb_dir)
    assert manifest["rows"] == {"train": 3000, "test": 600} and manifest["model_uri"] == summary["model_uri"]
    ids, labels, vectors = read_embeddings(f"{emb_dir}/train")
    assert np.array_equal(ids, np.arange(3000)) and vectors.shape == (3000, 64)
    images, true_labels = load_split(cfg.data, cfg.model, "train")
    assert np.array_equal(labels, true_labels)
    tracking.setup(cfg.mlflow, cfg.output_dir)
    model = tracking.load_model(summary["model_uri"])
    with torch.no_grad():
        direct = model.embed(torch.from_numpy(to_float(images[:64]))).numpy()
    np.testing.assert_allclose(vectors[:64], direct, rtol=1e-4, atol=1e-4)
    assert len(list((tmp := __import__("pathlib").Path(emb_dir) / "train").glob("*.parquet"))) >= 3, tmp


def test_index_refuses_corruption_and_wrong_dim(pipeline, tmp_path):
    from mrl.artifacts.index import IndexMismatchError, load_index

    cfg, summary = pipeline
    path = f"{cfg.output_dir}/index/{summary['index_run_id']}"
    artifact = load_index(path, expect_dim=64, expect_model_uri=summary["model_uri"])
    assert artifact.manifest["rows"] == 3000 and sorted(artifact.manifest["sizes"]) == [8, 16, 32, 64]
    assert set(artifact.engine.sources) == {"size_8", "size_16", "size_32", "size_64", "adanns"}
    with pytest.raises(IndexMismatchError, match="d=64 vectors, not d=128"):
        load_index(path, expect_dim=128)
    with pytest.raises(IndexMismatchError, match="built for model"):
        load_index(path, expect_model_uri="models:/other/1")
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    labels = np.load(broken / "labels.npy")
    labels[0] += 1
    np.save(broken / "labels.npy", labels)
    with pytest.raises(IndexMismatchError, match="labels.npy does not match its manifest checksum"):
        load_index(broken)


def test_search_by_id_and_by_vector(pipeline):
    from mrl.artifacts.index import load_index
    from mrl.retrieval.topk import exact_search

    cfg, summary = pipeline
    url = summary["url"]
    reply = requests.post(f"{url}/search", json={"id": 7, "k": 5}, timeout=30).json()
    assert reply["ids"][0] == 7 and reply["scores"][0] == pytest.approx(1.0, abs=1e-5)
    assert reply["model"]["uri"] == summary["model_uri"]
    assert reply["index"]["version"] == summary["index_run_id"]
    assert reply["search"] == {"mode": "adaptive", "shortlist": {"source": "size_16", "k": 200},
                               "reranks": [[64, 5]], "k": 5}

    artifact = load_index(f"{cfg.output_dir}/index/{summary['index_run_id']}")
    query = np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)
    reply = requests.post(f"{url}/search", json={"vector": query[0].tolist(), "k": 10,
                                                 "shortlist_k": 3000}, timeout=30).json()
    scores, positions = exact_search(np.asarray(artifact.vectors), query, 10)
    assert reply["ids"] == artifact.ids[positions[0]].tolist()  # K = N: adaptive equals exact search
    np.testing.assert_allclose(reply["scores"], scores[0], atol=1e-5)


def test_every_search_mode_answers_over_http(pipeline):
    from mrl.artifacts.index import load_index
    from mrl.retrieval.topk import exact_search

    cfg, summary = pipeline
    url = summary["url"]
    health = requests.get(f"{url}/healthz", timeout=30).json()
    assert health["modes"] == ["adaptive", "funnel", "adanns", "full"]
    artifact = load_index(f"{cfg.output_dir}/index/{summary['index_run_id']}")
    assert artifact.manifest["adanns"] == {"size": 16, "nlist": 256}
    query = np.random.default_rng(1).normal(size=(1, 64)).astype(np.float32)
    _, truth = exact_search(np.asarray(artifact.vectors), query, 10)
    full = requests.post(f"{url}/search", json={"vector": query[0].tolist(), "mode": "full"}, timeout=30).json()
    assert full["ids"] == artifact.ids[truth[0]].tolist()
    assert full["search"] == {"mode": "full", "shortlist": {"source": "size_64", "k": 10}, "reranks": [], "k": 10}
    for mode, first in (("funnel", []), ("adanns", [[16, 200]])):
        reply = requests.post(f"{url}/search", json={"id": 11, "k": 5, "mode": mode}, timeout=30).json()
        assert reply["search"]["mode"] == mode and reply["search"]["reranks"] == first + [[32, 100], [64, 5]]
        assert reply["ids"][0] == 11 and len(reply["ids"]) == 5
        assert reply["scores"] == sorted(reply["scores"], reverse=True)
    # a funnel whose first cut keeps half of the corpus finds the exact top-10 at d
    reply = requests.post(f"{url}/search", json={"vector": query[0].tolist(), "mode": "funnel",
                                                 "shortlist_k": 3000}, timeout=30).json()
    assert reply["search"]["reranks"] == [[32, 1500], [64, 10]] and reply["ids"] == full["ids"]


@pytest.mark.parametrize("body, status, message", [
    ({"id": 1, "mode": "fastest"}, 422, "mode 'fastest' is not available on this index; choose one of"),
    ({"vector": [0.1] * 3}, 422, "length 3; this index expects d=64"),
    ({"id": 10**9}, 404, "not in the corpus"),
    ({"id": 1, "k": 0}, 422, "k=0 is outside the accepted range"),
    ({"id": 1, "k": 3001}, 422, "k=3001 is outside the accepted range"),
    ({}, 422, "exactly one of 'vector'"),
    ({"id": 1, "vector": [0.1] * 64}, 422, "exactly one of 'vector'"),
    ({"vector": [0.0] * 64}, 422, "vector is zero"),
    ({"vector": [0.0] * 16 + [0.1] * 48}, 422, "vector is zero on its first 16 values"),
    ({"vector": [1e39] + [0.1] * 63}, 422, "beyond float32's range"),
    ({"id": "seven"}, 422, "valid integer"),
    ({"id": 1, "colour": "red"}, 422, "Extra inputs"),
])
def test_bad_requests_get_4xx_and_the_service_keeps_answering(pipeline, body, status, message):
    url = pipeline[1]["url"]
    resp = requests.post(f"{url}/search", json=body, timeout=30)
    assert resp.status_code == status and message in resp.text, resp.text
    assert requests.post(f"{url}/search", json={"id": 1, "k": 3}, timeout=30).status_code == 200


def test_extreme_but_finite_vectors_search_by_direction(pipeline):
    url = pipeline[1]["url"]
    direction = np.random.default_rng(3).standard_normal(64)

    def ids(vector, **extra):
        resp = requests.post(f"{url}/search", json={"vector": vector.tolist(), **extra}, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()["ids"]

    plain = ids(direction)
    assert ids(direction * 1e20) == plain and ids(direction * 1e-30) == plain  # float32 norms would overflow
    # zero on the shortlist prefix: only a full-size search has a direction to follow
    tail = np.concatenate([np.zeros(16), direction[16:]])
    assert len(ids(tail, mode="full")) == 10


@pytest.mark.parametrize("raw", ['{"vector": [NaN' + ", 0.1" * 63 + "]}", '{"id": 1,', "not json"])
def test_nan_and_malformed_json_get_422(pipeline, raw):
    url = pipeline[1]["url"]
    resp = requests.post(f"{url}/search", data=raw, headers={"content-type": "application/json"}, timeout=30)
    assert resp.status_code == 422, resp.text
    assert requests.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"


def test_tune_sweep_stops_a_lagging_trial_picks_a_winner_and_resumes(pipeline):
    import dataclasses

    import yaml

    from mrl.config import TrainJobConfig, TuneJobConfig
    from mrl.stages.tune import run as run_tune

    cfg, _ = pipeline
    overrides = [f"output_dir={cfg.output_dir}", "sweep_name=e2e-sweep", "base.data.train_limit=1500",
                 "base.model.dim=32", "base.train.epochs=3", "base.resources.num_workers=1", "search.algorithm=grid",
                 "search.num_samples=1",
                 "search.scheduler=asha", "space.schedules=[log]", "space.min_sizes=[4]", "space.deploy_sizes=[8]",
                 "space.smallest_weight=[1.0]", "space.weight_alpha=[0.0]", "space.lr=[0.004, 0.00001]",
                 "train_winner=true", "winner_epochs=1"]
    job = load_config(TuneJobConfig, REPO / "tuning" / "search_space.yaml", overrides)
    result = run_tune(job)
    trials = sorted(result["trials"], key=lambda t: -t["params"]["lr"])
    assert [t["error"] for t in trials] == [None, None]
    # ASHA stopped the trial whose 8-d accuracy lagged at its first rung; the good one ran every epoch
    assert trials[0]["epochs"] == 3 and trials[1]["epochs"] < 3
    import ray
    from ray.util.state import list_actors

    deadline = __import__("time").time() + 60  # the stopped trial's Train workers are torn down, not leaked
    gcs = ray.get_runtime_context().gcs_address  # this test's cluster, not the newest one started on the machine
    while [a for a in list_actors(address=gcs, filters=[("state", "=", "ALIVE")])
           if a.class_name.startswith("RayTrainWorker")]:
        assert __import__("time").time() < deadline, "Ray Train workers still alive after the sweep"
        __import__("time").sleep(2)
    assert result["small_metric"] == "val_top1_d8" and result["winner"]["params"]["lr"] == 0.004
    winner = load_config(TrainJobConfig, result["winner_yaml"])  # a valid training config, ready to run
    assert winner.model.sizes == [4, 8, 16, 32] and winner.train.lr == 0.004 and winner.train.epochs == 1
    from mrl.artifacts import tracking

    registered = tracking.load_model(result["winner_model_uri"])  # trained with winner.yaml and registered
    assert registered.sizes == [4, 8, 16, 32] and result["winner_model_uri"] != "models:/mrl-fashion-mnist/1"
    assert yaml.safe_load(open(result["winner_yaml"]))["run_name"] == "e2e-sweep-winner"
    assert (__import__("pathlib").Path(result["winner_yaml"]).parent / "pareto.png").stat().st_size > 1000
    client, runs = runs_by_stage(cfg)
    parent = runs["tune"]
    assert parent.data.metrics["trials_stopped_early"] == 1
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    # the same sweep name resumes the sweep: its finished trials are kept, not trained again
    started = __import__("time").time()
    again = run_tune(dataclasses.replace(job, train_winner=False))
    assert sorted(t["metrics"]["val_top1_d8"] for t in again["trials"]) == \
        sorted(t["metrics"]["val_top1_d8"] for t in result["trials"])
    assert __import__("time").time() - started < 30


def test_lineage_follows_every_link_and_flags_a_broken_one(pipeline, tmp_path):
    from mrl.artifacts.lineage import trace
    from mrl.cli import main

    cfg, summary = pipeline
    client = MlflowClient(f"sqlite:///{cfg.output_dir}/mlflow.db")
    links = trace(summary["url"], client)
    assert [link.kind for link in links] == ["deployment", "index", "embeddings", "model", "training run", "dataset"]
    assert [link.problem for link in links] == [None] * 6, [link.line() for link in links]
    assert links[1].details["run"] == summary["index_run_id"] and links[3].name == summary["model_uri"]
    assert links[4].name == summary["train_run_id"] and "fashion_mnist" in links[5].name
    assert main(["lineage", f"target={summary['url']}", f"output_dir={cfg.output_dir}"]) == 0
    # a corrupted copy of the index, and an embeddings manifest naming a run that does not exist
    broken = tmp_path / "index"
    shutil.copytree(f"{cfg.output_dir}/index/{summary['index_run_id']}", broken)
    (broken / "labels.npy").write_bytes(b"corrupt")
    links = trace(str(broken), client)
    assert "does not match its manifest checksum" in links[0].problem and links[1].problem is None
    assert main(["lineage", f"target={broken}", f"output_dir={cfg.output_dir}"]) == 1
    emb = tmp_path / "emb"
    shutil.copytree(f"{cfg.output_dir}/embeddings/{summary['embed_run_id']}", emb)
    manifest = __import__("json").loads((emb / "manifest.json").read_text())
    (emb / "manifest.json").write_text(__import__("json").dumps({**manifest, "embed_run_id": "0" * 32}))
    assert "not found" in trace(str(emb), client)[0].problem


def test_training_resumes_a_named_run_and_refuses_another_model(pipeline, tmp_path):
    from mrl.config import TrainJobConfig
    from mrl.stages.train import run as run_train

    common = [f"output_dir={tmp_path}", "run_name=resumable", "data.train_limit=800", "model.dim=16",
              "resources.num_workers=1"]
    first = run_train(load_config(TrainJobConfig, overrides=[*common, "train.epochs=1"]))
    second = run_train(load_config(TrainJobConfig, overrides=[*common, "train.epochs=2"]))
    assert first["metrics"]["epoch"] == 1 and second["metrics"]["epoch"] == 2
    history = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(second["run_id"], "epoch")
    assert [m.value for m in history] == [2.0]  # only the second epoch ran in the resumed run
    with pytest.raises(Exception, match="holds a checkpoint of another model config"):
        run_train(load_config(TrainJobConfig, overrides=[*common, "train.epochs=3", "model.dim=32"]))


def test_first_registered_model_is_champion_and_promote_moves_an_alias(pipeline):
    from mrl.artifacts import tracking
    from mrl.cli import main

    cfg, summary = pipeline
    tracking.setup(cfg.mlflow, cfg.output_dir)
    assert tracking.describe_model("models:/mrl-fashion-mnist@champion")["model_uri"] == summary["model_uri"]
    out = cfg.output_dir
    assert main(["promote", f"model_uri={summary['model_uri']}", "alias=staging", f"output_dir={out}"]) == 0
    assert tracking.describe_model("models:/mrl-fashion-mnist@staging")["model_uri"] == summary["model_uri"]
    assert main(["promote", "model_uri=models:/mrl-fashion-mnist/99", f"output_dir={out}"]) == 2  # no version 99



def test_an_image_query_finds_what_its_embedding_finds(pipeline):
    """POST an image: the Encoder deployment (the index's own model version, the embed stage's preprocessing)
    embeds it, and the reply equals the reply to that image's stored embedding."""
    import base64
    import io

    from PIL import Image

    from mrl.artifacts.embeddings import read_embeddings
    from mrl.data.sources import load_split

    cfg, summary = pipeline
    url = summary["url"]
    assert requests.get(f"{url}/healthz", timeout=30).json()["encoder"] == summary["model_uri"]
    images, _ = load_split(cfg.data, cfg.model, "test")
    _, _, vectors = read_embeddings(f"{cfg.output_dir}/embeddings/{summary['embed_run_id']}/test")
    for i in (0, 5):
        png = io.BytesIO()
        Image.fromarray(images[i, 0]).save(png, format="PNG")
        by_image = requests.post(f"{url}/search", json={"image": base64.b64encode(png.getvalue()).decode(), "k": 5},
                                 timeout=30)
        assert by_image.status_code == 200, by_image.text
        by_vector = requests.post(f"{url}/search", json={"vector": vectors[i].tolist(), "k": 5}, timeout=30).json()
        assert by_image.json()["ids"] == by_vector["ids"]
    resp = requests.post(f"{url}/search", json={"image": base64.b64encode(b"not an image").decode()}, timeout=30)
    assert resp.status_code == 422 and "not a readable image" in resp.text


def test_budget_requests_follow_the_measured_calibration_table(pipeline):
    """The index stage measured a calibration table on the test split; over HTTP every budget runs the plan that
    table picks for it, and the reply names the calibrated figures it was chosen by. (Which plans differ depends
    on the measured table: on this 3,000-row index the full search can be the fastest plan too. Different
    budgets choosing different plans over HTTP, on a table fixed by hand: tests/e2e/test_service_http.py.)"""
    from mrl.artifacts.manifest import read_manifest
    from mrl.retrieval.calibrate import plan_for_budget

    cfg, summary = pipeline
    url = summary["url"]
    table = read_manifest(f"{cfg.output_dir}/index/{summary['index_run_id']}")["calibration"]
    budgets = requests.get(f"{url}/healthz", timeout=30).json()["budgets"]
    assert budgets["plans"] == len(table["rows"]) >= 10 and budgets["recall"][1] == 1.0
    asked = [{"recall": r["recall"]} for r in table["rows"]] + [{"latency_ms": r["p50_ms"]} for r in table["rows"]]
    for budget in asked[::3]:
        reply = requests.post(f"{url}/search", json={"id": 3, "budget": budget}, timeout=30).json()
        want = plan_for_budget(table, budget)
        assert reply["budget"]["setting"] == want["setting"] and reply["budget"]["met"] is want["met"] is True
        assert reply["search"]["mode"] == want["setting"]["mode"]
    bad = requests.post(f"{url}/search", json={"id": 3, "budget": {"recall": "high"}}, timeout=30)
    assert bad.status_code == 422


def test_the_openai_client_embeds_with_the_index_model_at_every_trained_size(pipeline):
    """The official `openai` client, pointed at the service (base_url), embeds query images with the index's own
    model version: for every nesting size its vectors are the stored embeddings' unit prefixes, whether the client
    asks for base64 (its default) or floats; a size the model was not trained for is refused (422)."""
    import base64
    import io

    import openai
    from PIL import Image

    from mrl.artifacts.embeddings import read_embeddings
    from mrl.data.sources import load_split

    cfg, summary = pipeline
    client = openai.OpenAI(base_url=f"{summary['url']}/v1", api_key="no key on this service", max_retries=0,
                           timeout=60)
    assert [m.id for m in client.models.list().data] == [summary["model_uri"]]
    images, _ = load_split(cfg.data, cfg.model, "test")
    _, _, vectors = read_embeddings(f"{cfg.output_dir}/embeddings/{summary['embed_run_id']}/test")
    inputs = []
    for i in range(8):
        png = io.BytesIO()
        Image.fromarray(images[i, 0]).save(png, format="PNG")
        inputs.append(f"data:image/png;base64,{base64.b64encode(png.getvalue()).decode()}")
    for size in cfg.model.sizes:
        for fmt in (openai.omit, "float"):  # omitted: the client asks for base64 and decodes it
            reply = client.embeddings.create(model=summary["model_uri"], input=inputs, dimensions=size,
                                             encoding_format=fmt)
            got = np.array([d.embedding for d in reply.data])
            want = vectors[:8, :size] / np.linalg.norm(vectors[:8, :size], axis=1, keepdims=True)
            assert got.shape == (8, size) and np.sum(got * want, axis=1).min() >= 0.9999, (size, fmt)
    with pytest.raises(openai.UnprocessableEntityError, match="not one of this model's trained sizes"):
        client.embeddings.create(model=summary["model_uri"], input=inputs[:1], dimensions=max(cfg.model.sizes) - 1)
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.embeddings.create(model="text-embedding-3-small", input=inputs[:1])
