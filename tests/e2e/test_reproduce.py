"""The quick reproduction path end to end on a small slice: real Ray tasks running the platform's training
loop, FAISS retrieval, linear probes, adaptive classification, result files and MLflow."""

import json

import pytest
from mlflow import MlflowClient

from mrl.configio import load_config
from mrlbench.reproduce import ReproduceConfig

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    import ray

    from mrlbench.reproduce import run_reproduce

    out = tmp_path_factory.mktemp("reproduce")
    cfg = load_config(ReproduceConfig, REPO / "benchmarks" / "reproduce_quick.yaml", [
        f"output_dir={out}", "data.train_limit=3000", "data.test_limit=300", "model.dim=16", "seeds=[0, 1]",
        "train.epochs=2",
        "probe_epochs=3", "results_name=tiny"])
    result = run_reproduce(cfg, out / "results", command="pytest")
    yield cfg, out, result
    ray.shutdown()


def test_every_method_and_size_is_measured_over_both_seeds(reproduced):
    _, _, result = reproduced
    methods = {"mrl", "mrl_e", "ff", "ff_first_m", "ff_pca", "ff_random_proj"}
    assert {(r["method"], r["size"]) for r in result["summary"]} == {(m, s) for m in methods for s in (2, 4, 8, 16)}
    assert len(result["rows"]) == 2 * len(methods) * 4
    for row in result["summary"]:
        assert row["seeds"] == 2
        for metric in ("top1", "nn1", "map"):
            assert 0.0 <= row[metric] <= 1.0 and row[f"{metric}_std"] >= 0.0
    full = {r["method"]: r for r in result["summary"] if r["size"] == 16}
    assert full["mrl"]["top1"] > 0.4 and full["ff"]["top1"] > 0.4  # 10 classes: chance is 0.1


def test_adaptive_curve_and_targets_are_reported(reproduced):
    _, _, result = reproduced
    assert {p["seed"] for p in result["curves"]} == {0, 1}
    for point in result["curves"]:
        assert 2 <= point["expected_size"] <= 16 and len(point["thresholds"]) == 4
    assert len(result["targets"]) == 6 and all(isinstance(t["passed"], bool) for t in result["targets"])


def test_result_files_and_mlflow_run(reproduced):
    cfg, out, result = reproduced
    results = out / "results"
    names = {p.name for p in results.iterdir()}
    assert names == {"tiny.md", "tiny.csv", "tiny_per_seed.csv", "tiny.json", "tiny_accuracy_vs_size.png",
                     "tiny_adaptive.png"}
    md = (results / "tiny.md").read_text()
    assert "## linear top-1" in md and "## Adaptive classification" in md and "±" in md
    assert json.loads((results / "tiny.json").read_text())["meta"]["command"] == "pytest"
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    run = client.get_run(result["run_id"])
    assert run.data.tags["mrl.stage"] == "reproduce"
    assert {a.path for a in client.list_artifacts(result["run_id"], "results")} == {f"results/{n}" for n in names}
