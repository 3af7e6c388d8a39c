"""Lineage you can query: from a deployment, an index, an embeddings directory or a model down to the dataset.

Every stage records what it consumed (manifests on disk, `mrl.*` tags and registered models in MLflow);
`trace` follows those records link by link and checks each: the run exists and is not deleted, the
manifest's checksums match the files, the registered model version exists. `mrl lineage target=...`
prints the chain and exits non-zero when a link is broken.

    deployment (URL) -> index (directory, run) -> embeddings (directory, run) -> model (registry version)
        -> training run (params) -> dataset (source, digest)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrl.artifacts.manifest import read_manifest, sha256
from mrl.artifacts.tracking import TAG_CHECKPOINT, TAG_URL, describe_model


@dataclass
class Link:
    """One link of a chain: what it is, its identity, what was checked, and the problem if broken."""

    kind: str
    name: str
    details: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    def line(self) -> str:
        facts = ", ".join(f"{k} {v}" for k, v in self.details.items() if v not in (None, ""))
        status = f"BROKEN: {self.problem}" if self.problem else "ok"
        return f"{self.kind:<13} {self.name}" + (f"  ({facts})" if facts else "") + f"  [{status}]"


def _run(client, run_id: str | None) -> tuple[Any, str | None]:
    """(the MLflow run, None) or (None, what is wrong with it)."""
    if not run_id:
        return None, "no run id recorded"
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # MlflowException: the run is not in this store
        return None, f"MLflow run {run_id} not found ({type(exc).__name__})"
    if run.info.lifecycle_stage == "deleted":
        return run, f"MLflow run {run_id} is deleted"
    return run, None


def _checksums(path: Path, manifest: dict[str, Any]) -> tuple[int, str | None]:
    sums = manifest.get("checksums", {})
    for name, digest in sums.items():
        file = path / name
        if not file.is_file():
            return len(sums), f"{file} listed in the manifest is missing"
        if sha256(file) != digest:
            return len(sums), f"{file} does not match its manifest checksum"
    return len(sums), None


def trace(target: str, client) -> list[Link]:
    """The chain of links from `target` (an http(s) URL of a running service, an index or embeddings
    directory, or a model URI) down to the training data, each checked."""
    if target.startswith(("http://", "https://")):
        return _deployment(target.rstrip("/"), client)
    if target.startswith(("models:/", "runs:/")):
        return _model(target, client)

    try:
        stage = read_manifest(target).get("stage")
    except (FileNotFoundError, ValueError) as exc:
        return [Link("artifact", target, problem=str(exc))]
    if stage == "index":
        return _index(Path(target).resolve(), client)
    if stage == "embed":
        return _embeddings(Path(target).resolve(), client)
    return [Link("artifact", target, problem=f"manifest of stage {stage!r}: not an index or embeddings directory")]


def _deployment(url: str, client) -> list[Link]:
    import requests

    try:
        health = requests.get(f"{url}/healthz", timeout=10).json()
    except Exception as exc:
        return [Link("deployment", url, problem=f"no answer from {url}/healthz ({type(exc).__name__})")]
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{TAG_URL}` = '{url}'", order_by=["attributes.start_time DESC"],
                              max_results=1) if experiments else []
    link = Link("deployment", url, {"index version": health["index"]["version"], "model": health["model"]["uri"],
                                    "serve run": runs[0].info.run_id if runs else None})
    if not runs:
        link.problem = f"no MLflow serve run records {url}"
    return [link, *_index(Path(health["index"]["path"]), client)]


def _index(path: Path, client) -> list[Link]:
    try:
        manifest = read_manifest(path, stage="index")
    except (FileNotFoundError, ValueError) as exc:
        return [Link("index", str(path), problem=str(exc))]
    files, bad = _checksums(path, manifest)
    _, problem = _run(client, manifest.get("index_run_id"))
    link = Link("index", str(path), {"run": manifest.get("index_run_id"), "rows": manifest.get("rows"),
                                     "sizes": manifest.get("sizes"), "files verified": files},
                problem=bad or problem)
    return [link, *_embeddings(Path(manifest.get("embeddings", "")), client)]


def _embeddings(path: Path, client) -> list[Link]:
    try:
        manifest = read_manifest(path, stage="embed")
    except (FileNotFoundError, ValueError) as exc:
        return [Link("embeddings", str(path), problem=str(exc))]
    _, problem = _run(client, manifest.get("embed_run_id"))
    link = Link("embeddings", str(path), {"run": manifest.get("embed_run_id"), "rows": manifest.get("rows"),
                                          "dim": manifest.get("dim")}, problem=problem)
    return [link, *_model(manifest.get("model_uri", ""), client)]


def _model(uri: str, client) -> list[Link]:
    try:
        info = describe_model(uri)
    except Exception as exc:  # unknown name or version
        return [Link("model", uri, problem=f"not in the registry ({type(exc).__name__}: {exc})")]
    links = [Link("model", info["model_uri"], {"version": info.get("model_version"),
                                               "training run": info.get("model_run_id")})]
    run, problem = _run(client, info.get("model_run_id"))
    if problem:
        links.append(Link("training run", str(info.get("model_run_id")), problem=problem))
        return links
    params = run.data.params
    links.append(Link("training run", run.info.run_id, {"name": run.info.run_name, "params": len(params),
                                                        "epochs": params.get("train.epochs"),
                                                        "checkpoint": run.data.tags.get(TAG_CHECKPOINT)}))
    inputs = getattr(run.inputs, "dataset_inputs", None) or []
    if not inputs:
        links.append(Link("dataset", "-", problem="the training run logged no dataset input"))
    for item in inputs:
        ds = item.dataset
        links.append(Link("dataset", ds.name, {"source": ds.source, "digest": ds.digest}))
    return links
