"""The serve stage: deploy the retrieval service (`mrl.service`) on the job's Ray cluster and record the
deployment in MLflow (a `serve` run whose input is the index run)."""

from __future__ import annotations

import time
from typing import Any

from mrl.artifacts import tracking
from mrl.artifacts.manifest import read_manifest
from mrl.artifacts.remote import artifact_location
from mrl.configio import to_dict
from mrl.service.app import deploy
from mrl.stages.config import ServeJobConfig
from mrl.stages.stage import stage_run


def run(job: ServeJobConfig) -> dict[str, Any]:
    """Deploy the service on the job's Ray cluster and record a `serve` run in MLflow; with `job.block`, serve
    until Ctrl-C.

    Returns:
        {"url", "run_id", "index_version"}.
    """
    from ray import serve

    index_dir = artifact_location(job.index_dir)
    manifest = read_manifest(index_dir, stage="index")
    cfg = job.serve
    url = f"http://{cfg.host}:{cfg.port}"
    with stage_run("serve", job, input_run_id=manifest.get("index_run_id", ""), input_uri=index_dir,
                   tags={tracking.TAG_URL: url}) as stage:
        serve.start(http_options=http_options(cfg))
        apps = deploy(index_dir, cfg, "mrl", stage.tracking_uri)  # a sharded index: one application per shard too
        tracking.log_params({"serve": to_dict(cfg), "index_dir": index_dir, "model_uri": manifest.get("model_uri"),
                             "applications": apps})
    shards = manifest.get("shards")
    sharded = (f"; {len(shards['list'])} shards x {cfg.shard_replicas} replicas, shortlist rule {shards['rule']}"
               if shards else "")
    print(f"[serve] retrieval at {url}/search (default mode {cfg.mode}; D_s={cfg.search.shortlist_size}, "
          f"K={cfg.search.shortlist_k}, D_r={cfg.search.rerank_size or manifest['dim']}{sharded})", flush=True)
    if job.block:
        serve_until_interrupted(url)
    return {"url": url, "run_id": stage.run_id, "index_version": manifest.get("index_run_id")}


def http_options(cfg) -> dict[str, Any]:
    """Ray Serve's HTTP proxy options for a `ServeConfig`: where it listens, and how long a request may take."""
    options: dict[str, Any] = {"host": cfg.host, "port": cfg.port}
    if cfg.request_timeout_s is not None:
        options["request_timeout_s"] = cfg.request_timeout_s
    return options


def serve_until_interrupted(url: str) -> None:
    """Keep this process (and so the Serve app it deployed) alive until Ctrl-C, then shut the app down."""
    from ray import serve

    print(f"[serve] serving at {url} until Ctrl-C", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
