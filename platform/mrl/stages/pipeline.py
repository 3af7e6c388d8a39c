"""The whole pipeline on one Ray cluster: train -> embed -> build_index -> evaluate -> serve -> example query.

Each stage is the same function the stand-alone job calls, and each meets the next through its artifact
on disk (registered model, Parquet embeddings, index directory), recorded in MLflow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mrl import storage
from mrl.artifacts import tracking
from mrl.artifacts.embeddings import read_embeddings
from mrl.data.sources import load_text_split
from mrl.runtime import captured_output
from mrl.stages import embed, evaluate, index, train
from mrl.stages import serve as serve_stage
from mrl.stages.config import EmbedJobConfig, EvaluateJobConfig, IndexJobConfig, PipelineConfig, ServeJobConfig
from mrl.stages.serve import serve_until_interrupted


def example_query(url: str, embeddings_dir: str, k: int = 5, text: str | None = None) -> dict[str, Any]:
    """POST a query to the running service and return the request and reply: `text` when given (text models),
    else the embedding of the first test item."""
    import requests

    ids, labels, vectors = read_embeddings(storage.join(embeddings_dir, "test"))
    body = {"text": text, "k": k} if text is not None else {"vector": [round(float(v), 6) for v in vectors[0]], "k": k}
    reply = requests.post(f"{url}/search", json=body, timeout=30)
    reply.raise_for_status()
    return {"query_id": int(ids[0]), "query_label": int(labels[0]), "request": body, "reply": reply.json()}


def _first_test_query(data) -> str:
    """The query text of the first test row (the row whose embedding `example_query` would otherwise send)."""

    return load_text_split(data, "test")["query"][0]


def run(cfg: PipelineConfig, shutdown: bool = True) -> dict[str, Any]:
    """Run every stage; print the per-size table, the MLflow store and an answered example query. What Ray,
    MLflow and the workers print goes to <output_dir>/logs/pipeline-<time>.log unless cfg.log_level is debug.

    Args:
        cfg: the validated pipeline config.
        shutdown: stop the Serve app at the end (unless cfg.keep_serving, which blocks until Ctrl-C first).

    Returns:
        A summary dict (also written to <output_dir>/pipeline_summary.json).
    """
    from ray import serve

    with captured_output("pipeline", cfg.output_dir, cfg.log_level):
        started, timings = time.time(), {}
        results = run_stages(cfg, timings)
        text = _first_test_query(cfg.data) if cfg.model.modality == "text" and cfg.serve.encoder else None
        example = example_query(results["serve"]["url"], results["embed"]["path"], text=text)
        uri = tracking.resolve_tracking_uri(cfg.mlflow, cfg.output_dir)
        summary = summarize(results, example, text, uri, timings, time.time() - started)
        Path(cfg.output_dir, "pipeline_summary.json").write_text(json.dumps(summary, indent=2))
        if cfg.keep_serving:
            serve_until_interrupted(results["serve"]["url"])
        elif shutdown:
            serve.shutdown()
    return summary


def run_stages(cfg: PipelineConfig, timings: dict[str, float]) -> dict[str, dict[str, Any]]:
    """train -> embed -> index -> evaluate -> serve, each stage's job built from the previous one's result;
    returns each stage's result by name and fills `timings` (seconds by stage)."""
    def stage(name: str, fn, job):
        print(f"\n=== {name} ===", flush=True)
        t0 = time.time()
        out = fn(job)
        timings[name] = round(time.time() - t0, 1)
        return out

    trained = stage("train", train.run, cfg.train_job())
    common = {"output_dir": cfg.output_dir, "artifacts_dir": cfg.artifacts_dir, "mlflow": cfg.mlflow,
              "log_level": cfg.log_level}
    embedded = stage("embed", embed.run, EmbedJobConfig(
        model_uri=trained["model_uri"], data=cfg.data, embed=cfg.embed, ray=cfg.ray, **common))
    indexed = stage("index", index.run, IndexJobConfig(embeddings=embedded["path"], index=cfg.index, **common))
    evaluated = stage("evaluate", evaluate.run, EvaluateJobConfig(
        embeddings=embedded["path"], evaluate=cfg.evaluate, **common))
    served = stage("serve", serve_stage.run, ServeJobConfig(
        index_dir=indexed["path"], serve=cfg.serve, ray=cfg.ray, block=False, **common))
    return {"train": trained, "embed": embedded, "index": indexed, "evaluate": evaluated, "serve": served}


def summarize(results: dict[str, dict[str, Any]], example: dict[str, Any], text: str | None, uri: str,
              timings: dict[str, float], wall: float) -> dict[str, Any]:
    """Print the run's summary (the full size's figures and where the per-size table is, the store, the example query
    and its answer) and return it as a dict."""
    trained, indexed, evaluated, served = (results[k] for k in ("train", "index", "evaluate", "serve"))
    reply, full = example["reply"], evaluated["rows"][-1]
    print("\n=== summary ===", flush=True)
    print(f"model {trained['model_uri']}, index {indexed['path']}", flush=True)
    print(f"per-size metrics: the evaluate table above, also in {evaluated['path']}/per_size.md and .csv", flush=True)
    if "top1" in full:
        print(f"full size d={full['size']}: linear top-1 {100 * full['top1']:.2f}%, 1-NN {100 * full['nn1']:.2f}%",
              flush=True)
    else:
        print(f"full size d={full['size']}: pair R@10 {100 * full['pair_r@10']:.2f}%, class 1-NN "
              f"{100 * full['nn1']:.2f}%", flush=True)
    print(f"MLflow store: {uri}\n  open the UI with: {tracking.ui_hint(uri)}", flush=True)
    asked = (f"the text {text!r} (the definition of test item {example['query_id']})" if text is not None else
             f"the embedding of test item {example['query_id']} (label {example['query_label']})")
    print(f"example query: POST {served['url']}/search with {asked}, k=5\n"
          f"  answered ids {reply['ids']} labels {reply['labels']} "
          f"scores {[round(s, 4) for s in reply['scores']]}\n"
          f"  by model {reply['model']['uri']} and index {reply['index']['version']} in {reply['took_ms']:.1f} ms\n"
          f"  the same by corpus id: curl -s -X POST {served['url']}/search -H 'content-type: application/json' "
          f"-d '{{\"id\": 0, \"k\": 5}}'", flush=True)
    print(f"stage seconds {timings}; wall time {wall:.0f}s", flush=True)
    return {"wall_seconds": round(wall, 1), "stage_seconds": timings, "model_uri": trained["model_uri"],
            "train_run_id": trained["run_id"], "embed_run_id": results["embed"]["run_id"],
            "index_run_id": indexed["run_id"], "evaluate_run_id": evaluated["run_id"],
            "serve_run_id": served["run_id"], "per_size": evaluated["rows"], "tracking_uri": uri,
            "url": served["url"], "example": {k: v for k, v in example.items() if k != "request"}}
