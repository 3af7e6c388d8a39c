"""The serve stage: deploy the retrieval service (`mrl.service`) on the current Ray cluster and record the
deployment in MLflow (a `deploy` run whose input is the index run)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mrl.artifacts import tracking
from mrl.artifacts.manifest import read_manifest
from mrl.configio import to_dict
from mrl.service.app import build_app


def run_serve(index_dir: str, serve_cfg, mlflow_cfg, output_dir: str, blocking: bool = False) -> dict[str, Any]:
    """Deploy the service on the current Ray cluster and record a `deploy` run in MLflow.

    Returns:
        {"url", "run_id", "index_version"}.
    """
    import mlflow
    from ray import serve


    manifest = read_manifest(index_dir, stage="index")
    tracking_uri = tracking.setup(mlflow_cfg, output_dir)
    serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port})
    serve.run(build_app(index_dir, serve_cfg, tracking_uri), name="mrl", route_prefix="/", blocking=False)
    url = f"http://{serve_cfg.host}:{serve_cfg.port}"
    with mlflow.start_run(run_name="deploy", tags={"mrl.stage": "deploy",
                                                   "mrl.input_run_id": manifest.get("index_run_id", ""),
                                                   "mrl.input_uri": str(Path(index_dir).resolve()),
                                                   "mrl.url": url}) as run:
        tracking.log_params({"serve": to_dict(serve_cfg), "index_dir": str(Path(index_dir).resolve()),
                             "model_uri": manifest.get("model_uri")})
    print(f"[serve] retrieval at {url}/search (default mode {serve_cfg.mode}; D_s={serve_cfg.shortlist_size}, "
          f"K={serve_cfg.shortlist_k}, D_r={serve_cfg.rerank_size or manifest['dim']})", flush=True)
    if blocking:
        print("[serve] serving until Ctrl-C", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return {"url": url, "run_id": run.info.run_id, "index_version": manifest.get("index_run_id")}
