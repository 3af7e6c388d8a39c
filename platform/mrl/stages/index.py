"""The index stage: FAISS indexes per prefix size over an embed run's database (train) split, written as
an index artifact (`mrl.artifacts.index`) and recorded in MLflow.

Embeddings in object storage are copied into this node's cache to be read (`mrl.artifacts.remote.local_copy`);
with `artifacts_dir` in object storage the index is built in a local directory and uploaded to
<artifacts_dir>/index/<run id>, its manifests last, then `latest` names it."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from mrl import storage
from mrl.artifacts import tracking
from mrl.artifacts.embeddings import read_embeddings
from mrl.artifacts.index import check_index_config, load_index, load_shard, write_index, write_sharded_index
from mrl.artifacts.manifest import point_latest, read_manifest, write_manifest
from mrl.artifacts.remote import artifact_location, local_copy, publish
from mrl.configio import to_dict
from mrl.core.models.encoders import encoder_modality
from mrl.retrieval.calibrate import calibrate
from mrl.retrieval.modes import index_source
from mrl.retrieval.quality import exact_engine, exact_plan
from mrl.retrieval.sharded import ShardedEngine
from mrl.stages.config import IndexJobConfig
from mrl.stages.stage import stage_run


def run(job: IndexJobConfig) -> dict[str, Any]:
    """The index stage for an `IndexJobConfig` over the embed run's database (train) split.

    Returns:
        {"run_id", "path", "sizes", "rows", "seconds"}.
    """
    import mlflow

    emb_uri = artifact_location(job.embeddings)
    emb = read_manifest(emb_uri, stage="embed")
    sizes = check_index_config(job.index, emb["dim"], emb["sizes"])
    with stage_run("index", job, input_run_id=emb["embed_run_id"], input_uri=emb_uri) as stage, \
            tempfile.TemporaryDirectory(prefix="mrl-index-") as staging:
        tracking.log_params({"index": to_dict(job.index), "embeddings": emb_uri, "sizes": sizes})
        emb_dir = local_copy(emb_uri)  # the run itself when local
        ids, labels, vectors = read_embeddings(emb_dir / "train", job.index.vector_dtype)
        final = storage.absolute(storage.join(job.artifacts, "index", stage.run_id))
        out = Path(staging, stage.run_id) if storage.is_remote(final) else Path(final)
        extra = {"index_run_id": stage.run_id, "embed_run_id": emb["embed_run_id"],
                 "model_uri": emb.get("model_uri"), "model_name": emb.get("model_name"),
                 "model_version": emb.get("model_version"), "embeddings": emb_uri,
                 "modality": _modality(emb)}
        adanns = None if job.index.adanns_size is None else (job.index.adanns_size, job.index.adanns_nlist)
        build = (out, ids, labels, vectors, sizes, job.index.kind, extra, {m: job.index.params(m) for m in sizes},
                 job.index.vector_dtype, adanns, job.index.codes)
        if job.index.shards > 1:
            manifest = write_sharded_index(*build, shards=job.index.shards, by=job.index.shard_by,
                                           rule=job.index.shard_rule)
        else:
            manifest = write_index(*build)
        if job.index.calibrate:
            manifest = _calibrate(out, emb_dir, manifest, job.index.calibration_queries, vectors=vectors, ids=ids)
        mlflow.log_artifacts(str(out), artifact_path="index")
        if storage.is_remote(final):
            publish(out, final)
        stage.wrote(final)
        mlflow.log_metrics({"rows": manifest["rows"], "index_wall_seconds": stage.seconds})
    point_latest(final)  # last: `latest` moves only to an index MLflow holds (a failed copy leaves the previous one)
    shards = f" in {job.index.shards} shards by {job.index.shard_by}" if job.index.shards > 1 else ""
    print(f"[index] {manifest['rows']} rows{shards}, sizes {sizes}, {job.index.kind} -> {final} "
          f"({stage.seconds:.0f}s)", flush=True)
    return {"run_id": stage.run_id, "path": final, "sizes": sizes, "rows": manifest["rows"],
            "seconds": stage.seconds}


def _modality(embed_manifest: dict) -> str:
    """What the indexed model reads ("image" or "text"): the service takes queries of that kind."""

    spec = embed_manifest.get("model_spec") or {}
    return encoder_modality(spec["encoder"]) if "encoder" in spec else "image"


def _calibrate(out: Path, emb_dir: Path, manifest: dict, n_queries: int, k: int = 10, vectors=None,
               ids=None) -> dict:
    """Measure the calibration table on held-out queries (the embed run's test split) and store it in the
    index manifest; without a test split the index has no table (budget requests then get 422). A sharded index
    is measured over its shards in this process (`ShardedEngine`: per query, the slowest shard plus the merge),
    against the exact top-k of all `vectors` (named by `ids`)."""
    import numpy as np

    if not (emb_dir / "test").is_dir():
        print("[index] no test split beside the embeddings: no calibration table (budgets unavailable)",
              flush=True)
        return manifest
    _, _, queries = read_embeddings(emb_dir / "test")
    pick = np.sort(np.random.default_rng(0).permutation(len(queries))[:n_queries])
    started = time.time()
    k = min(k, manifest["rows"])
    shards = manifest.get("shards")
    if shards:
        engine = ShardedEngine([load_shard(out, i) for i in range(len(shards["list"]))], shards["rule"])
        exact = exact_engine(vectors, [manifest["dim"]], device="cpu")
        truth = ids[exact.run(exact_plan(index_source(manifest["dim"]), k), queries[pick]).positions]
        table = calibrate(engine, queries[pick], manifest["sizes"], k=k, truth=truth)
    else:
        table = calibrate(load_index(out).engine, queries[pick], manifest["sizes"], k=k)
    manifest = {**manifest, "calibration": table}
    write_manifest(out, manifest)
    fastest, best = table["rows"][0], max(table["rows"], key=lambda r: r["recall"])
    print(f"[index] calibrated {len(table['rows'])} plans on {len(pick)} held-out queries in "
          f"{time.time() - started:.0f}s: fastest {fastest['p50_ms']:.2f} ms at recall {fastest['recall']:.3f}, "
          f"most accurate {best['p50_ms']:.2f} ms at recall {best['recall']:.3f}", flush=True)
    return manifest
