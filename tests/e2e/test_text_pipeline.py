"""End to end for text: jobs/pipeline_text.yaml on a small sample of WordNet through real Ray Train, Ray Data,
FAISS, Ray Serve over HTTP and MLflow in a temp dir, then probes of the artifacts and of `{"text": ...}` queries."""

import numpy as np
import pytest
import requests

from mrl.config import PipelineConfig
from mrl.configio import load_config

from conftest import REPO, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def text_pipeline(tmp_path_factory):
    import ray
    from ray import serve

    from mrl.stages.pipeline import run as run_pipeline

    out = tmp_path_factory.mktemp("text-pipeline")
    cfg = load_config(PipelineConfig, REPO / "jobs" / "pipeline_text.yaml", [
        f"output_dir={out}", f"data.path={out}/wordnet", "run_name=e2e-text", "data.train_limit=8000",
        "data.test_limit=500", "train.epochs=3", "train.batch_size=64", "train.lr=0.003", "model.dim=32",
        "model.text.vocab_size=2000", "model.text.max_tokens=32", "model.backbone.hidden_size=64",
        "model.backbone.num_hidden_layers=1", "model.backbone.intermediate_size=128", "index.adanns_nlist=32",
        f"serve.port={free_port()}", "ray.num_cpus=8"])
    summary = run_pipeline(cfg, shutdown=False)
    yield cfg, summary
    serve.shutdown()
    ray.shutdown()


def test_text_quality_beats_chance_at_every_size(text_pipeline):
    _, summary = text_pipeline
    rows = summary["per_size"]
    assert [r["size"] for r in rows] == [8, 16, 32]
    assert "top1" not in rows[0]  # no classifier heads on a text model
    for row in rows:  # chance: 10 of 500 test documents = 0.02 (class retrieval is measured, not trained for here)
        assert row["pair_r@10"] > 0.06 and row["rev_r@10"] > 0.06 and 0 <= row["nn1"] <= 1, row
    assert rows[-1]["pair_r@10"] > rows[0]["pair_r@10"]  # the full size knows more than the 8-d prefix


def test_the_registered_model_carries_its_tokenizer_and_made_the_embeddings(text_pipeline):
    """The embed stage tokenised with the registered model's own tokenizer: re-embedding the test documents with
    the model loaded from MLflow reproduces the stored vectors."""
    from mrl.artifacts import tracking
    from mrl.artifacts.embeddings import read_embeddings
    from mrl.data.sources import load_text_split

    cfg, summary = text_pipeline
    tracking.setup(cfg.mlflow, cfg.output_dir)
    model = tracking.load_model(summary["model_uri"])
    assert model.modality == "text" and model.tokenizer is not None and model.tokenizer.max_tokens == 32
    ids, _, vectors = read_embeddings(f"{cfg.output_dir}/embeddings/{summary['embed_run_id']}/test")
    rows = load_text_split(cfg.data, "test")
    assert np.array_equal(np.sort(ids), rows["id"])
    by_id = dict(zip(rows["id"].tolist(), rows["document"]))
    again = model.embed_texts([by_id[int(i)] for i in ids[:64]])
    assert np.allclose(again, vectors[:64], atol=1e-4)


def test_a_text_query_finds_what_its_embedding_finds(text_pipeline):
    from mrl.artifacts import tracking
    from mrl.data.sources import load_text_split

    cfg, summary = text_pipeline
    url = summary["url"]
    health = requests.get(f"{url}/healthz", timeout=30).json()
    assert health["queries"] == ["vector", "id", "text"] and health["encoder"] == summary["model_uri"]
    tracking.setup(cfg.mlflow, cfg.output_dir)
    model = tracking.load_model(summary["model_uri"])
    queries = load_text_split(cfg.data, "test")["query"][:3]
    for text in queries:
        by_text = requests.post(f"{url}/search", json={"text": text, "k": 5}, timeout=30)
        assert by_text.status_code == 200, by_text.text
        vector = model.embed_texts([text])[0]
        by_vector = requests.post(f"{url}/search", json={"vector": vector.tolist(), "k": 5}, timeout=30).json()
        assert by_text.json()["ids"] == by_vector["ids"] and by_text.json()["model"]["uri"] == summary["model_uri"]


@pytest.mark.parametrize("body, message", [
    ({"image": "aGVsbG8="}, "reads text, not image"),
    ({"text": ""}, "at least 1 character"),
    ({"text": 42}, "valid string"),
    ({"text": "a cat", "vector": [0.1] * 32}, "exactly one of"),
])
def test_bad_text_requests_get_422_and_the_service_keeps_answering(text_pipeline, body, message):
    _, summary = text_pipeline
    resp = requests.post(f"{summary['url']}/search", json=body, timeout=30)
    assert resp.status_code == 422 and message in resp.text, resp.text
    assert requests.post(f"{summary['url']}/search", json={"text": "a small dog"}, timeout=30).status_code == 200


def test_the_openai_client_embeds_texts_with_the_index_model(text_pipeline):
    """/v1/embeddings on a text index: the `openai` client's vectors are the model's unit prefixes of the texts'
    embeddings (its own tokenizer) at every nesting size, by the model's registered name as well as its URI."""
    import openai

    from mrl.artifacts import tracking
    from mrl.data.sources import load_text_split

    cfg, summary = text_pipeline
    tracking.setup(cfg.mlflow, cfg.output_dir)
    model = tracking.load_model(summary["model_uri"])
    texts = list(load_text_split(cfg.data, "test")["query"][:16])
    full = model.embed_texts(texts)
    client = openai.OpenAI(base_url=f"{summary['url']}/v1", api_key="none", max_retries=0, timeout=60)
    name = summary["model_uri"].split("/")[1]  # models:/<name>/<version>
    ids = model.tokenizer.encode(texts)
    read = int(np.count_nonzero(ids))  # [CLS], the pieces and [SEP] of each text, padding excluded
    arrays = [[int(t) for t in row if t] for row in ids]  # the same texts as token arrays of the model's vocabulary
    for size in model.sizes:
        want = full[:, :size] / np.linalg.norm(full[:, :size], axis=1, keepdims=True)
        for given in (texts, arrays):
            reply = client.embeddings.create(model=name, input=given, dimensions=size)
            got = np.array([d.embedding for d in reply.data])
            assert np.sum(got * want, axis=1).min() >= 0.9999, size
            assert reply.usage.prompt_tokens == reply.usage.total_tokens == read


def test_a_text_sweep_runs_on_ray_tune_and_picks_by_pair_recall(text_pipeline, capsys):
    """tuning/search_space_text.yaml, shrunk: two Ray Tune trials (Ray Train runs) of a text model that differ in
    InfoNCE temperature, each drawing 2 sizes a step; the sweep compares them on pair R@10 and writes the
    winner's config with its temperature."""
    from mrl.config import TrainJobConfig, TuneJobConfig
    from mrl.stages.tune import pick_winner
    from mrl.stages.tune import run as run_tune

    cfg, _ = text_pipeline
    overrides = [f"output_dir={cfg.output_dir}", f"base.data.path={cfg.data.path}", "sweep_name=e2e-text-sweep",
                 "base.data.train_limit=3000", "base.train.epochs=1", "base.train.batch_size=64", "base.train.lr=0.003",
                 "base.model.dim=32", "base.model.text.vocab_size=1000", "base.model.text.max_tokens=32",
                 "base.model.backbone.hidden_size=32", "base.model.backbone.num_hidden_layers=1",
                 "base.model.backbone.intermediate_size=64", "base.resources.num_workers=1", "search.algorithm=grid",
                 "search.num_samples=1", "search.scheduler=fifo", "space.schedules=[log]", "space.deploy_sizes=[8]",
                 "space.smallest_weight=[1.0]", "space.weight_alpha=[0.0]", "space.temperature=[0.05, 1.0]",
                 "space.temperature_power=[0.0]", "space.sizes_per_step=[2]"]
    result = run_tune(load_config(TuneJobConfig, REPO / "tuning" / "search_space_text.yaml", overrides))
    trials = sorted(result["trials"], key=lambda t: t["params"]["temperature"])
    assert [t["error"] for t in trials] == [None, None] and [t["params"]["sizes_per_step"] for t in trials] == [2, 2]
    assert (result["small_metric"], result["full_metric"]) == ("val_r10_d8", "val_r10_full")
    for t in trials:
        assert 0 < t["metrics"]["val_top1_d8"] <= t["metrics"]["val_r10_d8"] <= 1
    points = [(t["metrics"]["val_r10_d8"], t["metrics"]["val_r10_full"]) for t in result["trials"]]
    assert result["winner"] == result["trials"][pick_winner(points, 0.003)]
    winner = load_config(TrainJobConfig, result["winner_yaml"])
    assert winner.train.temperature == result["winner"]["params"]["temperature"] and winner.train.sizes_per_step == 2
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[tune] trial ")]
    assert len(shown) == 2 and all("val_r10_d8" in line and "1 epoch(s)" in line for line in shown), shown
    assert shown[-1].startswith("[tune] trial 2/2 ")
