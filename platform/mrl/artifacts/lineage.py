"""Lineage you can query: from a deployment, an index, an embeddings directory or a model down to the dataset.

Every stage records what it consumed (manifests on disk, `mrl.*` tags and registered models in MLflow);
`trace` follows those records link by link and checks each: the run exists and is not deleted, the
manifest's checksums match the files, the registered model version exists, and the training data still has the
content digest the training run recorded (a shard changed, removed or added since training breaks that link,
naming the files). `mrl lineage target=...` prints the chain and exits non-zero when a link is broken.

A service with an API key tells only its key's holders which index and model it serves (its /healthz answers
anyone else "ok" alone): the key goes along as `Authorization: Bearer <key>`, and without it that link says so.
Embeddings directories from before manifests listed their files (embed format 1) are followed, their files noted
as not verified.

    deployment (URL) -> index (directory, run) -> embeddings (directory, run) -> model (registry version)
        -> training run (params) -> dataset (source, digest)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrl import storage
from mrl.artifacts.datasets import dataset_digest, describe_changes, file_digests
from mrl.artifacts.index import shard_manifest
from mrl.artifacts.manifest import format_version, read_manifest, verify_files
from mrl.artifacts.remote import artifact_location
from mrl.artifacts.tracking import (DATA_FILES_ARTIFACT, TAG_CHECKPOINT, TAG_DATA_DIGEST, TAG_DATA_PATH, TAG_URL,
                                    describe_model)

EMBED_VERSIONS = (1, 2)  # lineage reads what every embed format records; format 1 lists no files to verify


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


def _checksums(listings: dict[str, dict[str, str]]) -> tuple[int, str | None]:
    """(files verified, the first problem) over {directory: {file name: sha256}}."""
    try:
        for directory, listing in listings.items():
            verify_files(directory, listing, listing)
    except (ValueError, OSError) as exc:  # OSError: an object store that cannot be read
        return sum(map(len, listings.values())), str(exc)
    return sum(map(len, listings.values())), None


def trace(target: str, client, cache: Path | None = None, api_key: str | None = None) -> list[Link]:
    """The chain of links from `target` (an http(s) URL of a running service, an index or embeddings
    directory, or a model URI) down to the training data, each checked.

    Args:
        cache: the file-digest cache the data re-check may use (`mrl.artifacts.datasets.digest_cache`); None:
            every file of the training data is read again.
        api_key: the service's API key, sent as `Authorization: Bearer <key>` (a service with a key tells only
            its key's holders which index and model it serves).
    """
    if target.startswith(("http://", "https://")):
        return _deployment(target.rstrip("/"), client, cache, api_key)
    if target.startswith(("models:/", "runs:/")):
        return _model(target, client, cache)

    try:
        target = artifact_location(target)  # a `latest` followed, local or in object storage
        stage = read_manifest(target).get("stage")
    except (OSError, ValueError) as exc:  # OSError: missing, or a store that cannot be read
        return [Link("artifact", target, problem=str(exc))]
    if stage == "index":
        return _index(target, client, cache)
    if stage == "embed":
        return _embeddings(target, client, cache)
    return [Link("artifact", target, problem=f"manifest of stage {stage!r}: not an index or embeddings directory")]


def _deployment(url: str, client, cache: Path | None, api_key: str | None = None) -> list[Link]:
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        health = requests.get(f"{url}/healthz", headers=headers, timeout=10).json()
    except Exception as exc:
        return [Link("deployment", url, problem=f"no answer from {url}/healthz ({type(exc).__name__})")]
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{TAG_URL}` = '{url}'", order_by=["attributes.start_time DESC"],
                              max_results=1) if experiments else []
    link = Link("deployment", url, {"serve run": runs[0].info.run_id if runs else None})
    index = health.get("index") if isinstance(health, dict) else None
    if not isinstance(index, dict) or not index.get("path"):  # a keyed service's answer to a caller without it
        link.problem = (f"the service withholds its details without the API key: give api_key_env=<the name of "
                        f"an environment variable holding the key> (its /healthz answered {health!r})"
                        if not api_key else f"the service withholds its details from the API key given (wrong "
                        f"key?): its /healthz answered {health!r}")
        return [link]
    link.details = {"index version": index.get("version"), "model": (health.get("model") or {}).get("uri"),
                    **link.details}
    if not runs:
        link.problem = f"no MLflow serve run records {url}"
    return [link, *_index(str(index["path"]), client, cache)]


def _index(path: str, client, cache: Path | None) -> list[Link]:
    try:
        manifest = read_manifest(path, stage="index")
    except (OSError, ValueError) as exc:  # OSError: missing, or a store that cannot be read
        return [Link("index", str(path), problem=str(exc))]
    listings, shards, bad = {path: manifest.get("checksums") or {}}, None, None
    if manifest.get("shards"):  # each shard's manifest against the top-level listing, then the shard's own files
        try:
            for i in range(len(manifest["shards"]["list"])):
                _, where, own = shard_manifest(path, i)
                listings[where] = own.get("checksums") or {}
        except (OSError, ValueError) as exc:  # OSError: missing, or a store that cannot be read
            bad = str(exc)
        shards = ", ".join(f"{s['path']} {s['rows']} rows ids {s['id_min']}..{s['id_max']}"
                           for s in manifest["shards"]["list"])
        shards = f"{len(manifest['shards']['list'])} by {manifest['shards']['by']}: {shards}"
    files, bad_files = _checksums(listings)
    _, problem = _run(client, manifest.get("index_run_id"))
    details = {"run": manifest.get("index_run_id"), "rows": manifest.get("rows"), "sizes": manifest.get("sizes"),
               "files verified": files}
    if shards:
        details["shards"] = shards
    link = Link("index", str(path), details, problem=bad or bad_files or problem)
    return [link, *_embeddings(str(manifest.get("embeddings", "")), client, cache)]


def _embeddings(path: str, client, cache: Path | None) -> list[Link]:
    try:
        manifest = read_manifest(path, stage="embed", versions=EMBED_VERSIONS)
    except (OSError, ValueError) as exc:  # OSError: missing, or a store that cannot be read
        return [Link("embeddings", str(path), problem=str(exc))]
    if format_version(manifest) == 1:  # written before manifests listed their files: nothing to verify them by
        files, bad = "not verified (format 1: the manifest lists none; rerunning the embed stage lists them)", None
    else:
        files, bad = _checksums({storage.join(path, split): listing
                                 for split, listing in (manifest.get("files") or {}).items()})
    _, problem = _run(client, manifest.get("embed_run_id"))
    link = Link("embeddings", str(path), {"run": manifest.get("embed_run_id"), "rows": manifest.get("rows"),
                                          "dim": manifest.get("dim"), "files verified": files}, problem=bad or problem)
    return [link, *_model(manifest.get("model_uri", ""), client, cache)]


def _model(uri: str, client, cache: Path | None = None) -> list[Link]:
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
        links.append(_dataset(item.dataset, run, client, cache))
    return links


def _dataset(ds, run, client, cache: Path | None) -> Link:
    """The training data's link: its content digest recomputed and compared with what the training run recorded
    (runs from before digests were recorded say so and are not checked)."""
    recorded, location = run.data.tags.get(TAG_DATA_DIGEST), run.data.tags.get(TAG_DATA_PATH)
    link = Link("dataset", ds.name, {"source": ds.source, "digest": ds.digest})
    if not recorded or not location:
        link.details["content"] = "not recorded (trained before content digests)"
        return link
    try:
        now = file_digests(location, cache)
    except OSError as exc:
        link.problem = f"the training data {location} cannot be read now ({type(exc).__name__}: {exc})"
        return link
    if dataset_digest(now) == recorded:
        link.details["content"] = f"verified, {len(now)} files"
        return link
    link.problem = (f"the training data at {location} changed since training run {run.info.run_id}: "
                    f"{_changes(client, run.info.run_id, now)} (recorded digest {recorded[:16]}..., "
                    f"now {dataset_digest(now)[:16]}...); retrain, or restore the data")
    return link


def _changes(client, run_id: str, now: dict[str, list[Any]]) -> str:
    """Which files differ from the training run's recorded file list (when it was logged and can be read)."""
    import json
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            recorded = json.loads(Path(client.download_artifacts(run_id, DATA_FILES_ARTIFACT, tmp)).read_text())
    except Exception:  # noqa: BLE001 - not logged (a very large dataset) or the artifact store is unreachable
        return "its content digest differs"
    return describe_changes(recorded["files"], now)
