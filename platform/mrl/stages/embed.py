"""The embed stage: Ray Data batch inference with an actor pool, writing sharded Parquet.

Output layout (one directory per embed run, `latest` pointing at the newest):

    <output_dir>/embeddings/<run_name, or the MLflow run id>/
        plan.json                 what the run embeds (model, splits, rows per unit, dtype, ...): a rerun must match
        manifest.json             model URI/version, d, sizes, rows per split, verification, producing run ids,
                                  and every unit file with its sha256
        <split>/part-<unit>.parquet   columns id (int64), label (int64), embedding (fixed_size_list<float>[d])

A run works in `.<name>.partial/` beside it and renames that directory to `<name>` when every split is written,
verified and listed in the manifest (files fsynced first), so `<name>` is complete or absent; `latest` moves
after the run's MLflow record is written. A named run holds the lock `.<name>.lock` (pid, host, start time)
while it works: a second run of that name fails at once, naming the lock (a lock whose process is gone from this
host is cleared; one from another node is removed by hand, as the message says). Rerunning a finished named
run re-verifies its files and leaves it as it is.

Work is cut into units of `embed.rows_per_file` consecutive rows of a split; an actor of the pool embeds a
whole unit and writes its file atomically (a temporary name, then a rename), so a unit file exists complete
or not at all. Rerunning a named run (the job's `run_name`) skips every unit whose file is there and holds
exactly its rows, and embeds the rest: a killed job resumes with no row written twice and none missing. The
manifest is written only after every split's ids were read back and found unique and complete.

With `artifacts_dir` in object storage (s3://, gs://) the layout is the same under <artifacts_dir>/embeddings/,
less what object storage cannot do (`mrl.storage`): a run works in `<name>/` itself, where its manifest,
written last, says it is complete (readers open only what a manifest lists); each unit file is one PUT, whole or
absent, so resuming works as on disk; `latest` is an object naming the run; and the lock of a named run is held
on this machine's disk (<output_dir>/locks/), so it keeps a second run of that name off this machine only.

Image models embed the split's images; text models embed its `document` texts, tokenised by the model's own
tokenizer (the one registered with it). Ids are the data's: row positions for images, the `id` column for text.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from mrl import storage
from mrl.artifacts import tracking
from mrl.artifacts.embeddings import embedding_files, verify_split
from mrl.artifacts.files import create_exclusive, exclusive_lock, publish_dir, replace_with
from mrl.artifacts.manifest import MANIFEST, point_latest, read_manifest, verify_files, write_manifest
from mrl.artifacts.remote import cache_dir_for
from mrl.configio import from_dict, to_dict
from mrl.core.config import ModelConfig
from mrl.data.augment import augment, expand_ids
from mrl.data.config import DataConfig
from mrl.data.preprocess import embed_images, inference_model
from mrl.data.readers import TableRows, image_table, read_columns
from mrl.data.sources import load_text_split, open_split
from mrl.runtime import peak_rss_bytes, quiet_ray_data
from mrl.stages.config import EmbedJobConfig
from mrl.stages.stage import StageRun, prepare, stage_run


class Embedder:
    """Ray Data callable class: loads the model once per actor, maps image or text batches to embeddings."""

    def __init__(self, model_uri: str, tracking_uri: str, image_shape: tuple[int, ...] | None, threads: int = 1,
                 dtype: str = "float32", precision: str = "auto"):
        import mlflow
        import torch

        torch.set_num_threads(max(1, threads))
        mlflow.set_tracking_uri(tracking_uri)

        self.image_shape = tuple(image_shape or ())  # (C, H, W): Parquet/Arrow carries flattened pixels
        self.dtype = dtype
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = inference_model(tracking.load_model(model_uri), device, precision)

    def __call__(self, batch):
        """batch: a pyarrow Table with id, label and image (flattened uint8 pixels) or document (text)
        -> id, label, embedding."""
        return embed_rows(self.model, batch, self.image_shape, self.dtype)


def embed_rows(model, batch, image_shape: tuple[int, ...], dtype: str):
    """One batch of input rows (a pyarrow Table: id, label, and image as flattened uint8 pixels or document
    text) -> its output rows (id, label, embedding), on the model's device. Callable without Ray."""
    if "document" in batch.column_names:
        z = model.embed_texts(batch.column("document").to_pylist())  # (B, d)
    else:
        flat = batch.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        z = embed_images(model, flat.reshape((-1, *image_shape)))  # (B, d)
    return embedding_table(batch.column("id"), batch.column("label"), z, dtype)


def embedding_table(ids, labels, z: np.ndarray, dtype: str):
    """The output rows: id, label, embedding (fixed-size list of float32 or float16)."""
    import pyarrow as pa

    values = pa.array(z.ravel().astype(dtype), pa.float16() if dtype == "float16" else pa.float32())
    vectors = pa.FixedSizeListArray.from_arrays(values, z.shape[1])
    return pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64()), "embedding": vectors})


def plan_units(n_rows: int, rows_per_unit: int) -> list[tuple[int, int, int]]:
    """A split's units of work: (unit, first row, end row) over consecutive rows."""
    return [(i, lo, min(n_rows, lo + rows_per_unit)) for i, lo in enumerate(range(0, n_rows, rows_per_unit))]


def unit_path(split_dir: str | Path, unit: int) -> str:
    return storage.join(split_dir, f"part-{unit:05d}.parquet")


def unit_written(path: str | Path, expected_ids: np.ndarray) -> bool:
    """Whether a unit's file exists, reads, and holds exactly the ids of its rows, in order."""
    if not storage.is_file(path):
        return False
    try:
        ids = read_columns(path, ["id"]).column("id").to_numpy()
    except Exception:  # noqa: BLE001 - an unreadable file is one to write again
        return False
    return np.array_equal(ids, expected_ids)


def write_atomically(table, path: str | Path) -> None:
    """Write a Parquet file atomically: on disk `mrl.artifacts.files.replace_with` (a temporary name unique across
    hosts, processes and threads, fsynced, then renamed into place); in object storage one upload, which appears
    whole when it completes."""
    import pyarrow.parquet as pq

    if storage.is_remote(path):
        with storage.open_output(path) as out:
            pq.write_table(table, out)
    else:
        replace_with(Path(path), lambda tmp: pq.write_table(table, tmp))


class UnitEmbedder:
    """Ray Data callable class over units of work: loads the model and opens its split (metadata) once per
    actor, then reads, embeds and writes one unit (`rows_per_file` rows) per call, a batch at a time. The rows
    of a unit come from the split as the data gives them, or, for a split grown by augmentation, from base row
    `id % n_base` augmented with the id's seed (`mrl.data.augment`), so any actor rebuilds any unit exactly."""

    def __init__(self, model_uri: str, tracking_uri: str, data: dict, model_spec: dict, split: str, out_dir: str,
                 batch_size: int, threads: int = 1, dtype: str = "float32", precision: str = "auto",
                 augment_seed: int | None = None):
        self.source, image_shape = split_source(from_dict(DataConfig, data), model_spec, split)
        self.embedder = Embedder(model_uri, tracking_uri, image_shape, threads, dtype, precision)
        self.out, self.batch_size, self.augment_seed = out_dir, batch_size, augment_seed

    def rows(self, lo: int, hi: int):
        """Input rows lo..hi as a pyarrow table (id, label, image or document), read from where the data lives."""
        if self.augment_seed is None:
            return self.source.read(lo, hi)
        return augmented_rows(self.source, lo, hi, self.augment_seed, self.embedder.image_shape)

    def __call__(self, batch: dict) -> dict:
        import pyarrow as pa

        done = []
        for unit, lo, hi in zip(batch["unit"], batch["lo"], batch["hi"]):
            # one batch of input rows at a time (augmented ones built per batch), so an actor's memory holds one
            # batch of pixels and one unit of embeddings, whatever the split's size
            parts = [self.embedder(self.rows(i, min(int(hi), i + self.batch_size)))
                     for i in range(int(lo), int(hi), self.batch_size)]
            write_atomically(pa.concat_tables(parts), unit_path(self.out, int(unit)))
            done.append(int(hi) - int(lo))
        peak = np.full(len(done), peak_rss_bytes() or 0, dtype=np.int64)  # this actor's peak so far
        return {"unit": np.asarray(batch["unit"]), "rows": np.asarray(done, dtype=np.int64), "peak_rss": peak}


def augmented_rows(base, lo: int, hi: int, seed: int, image_shape: tuple[int, ...]):
    """Rows lo..hi of a split grown by augmentation: row id i copies base row i % n_base (the originals are
    ids below n_base) with the augmentation seeded by (seed, i); see `mrl.data.augment`. `base` reads rows by
    position (a `SplitReader` or `TableRows`); consecutive ids read consecutive base rows, wrapping at n_base."""
    import pyarrow as pa

    n_base = base.n
    ids = np.arange(lo, hi, dtype=np.int64)
    src = ids % n_base
    runs = np.split(src, np.flatnonzero(np.diff(src) != 1) + 1)
    rows = pa.concat_tables([base.read(int(run[0]), int(run[-1]) + 1) for run in runs if len(run)])
    labels = rows.column("label").to_numpy()
    pixels = rows.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return image_table(augment(pixels.reshape((-1, *image_shape)), ids, seed, n_base), labels, ids)


def run(job: EmbedJobConfig) -> dict[str, Any]:
    """The embed stage for an `EmbedJobConfig`.

    Returns:
        {"run_id", "path", "rows": {split: n}, "model_uri", "dim", "seconds"}.

    Raises:
        LockedError: another run of the same `run_name` is running (checked before any other work).
    """
    root = storage.absolute(storage.join(job.artifacts, "embeddings"))
    if job.run_name is None:  # the directory is named by this run's new MLflow run id: no other run writes it
        return _run(job, root)
    locks = Path(root) if not storage.is_remote(root) else \
        Path(job.output_dir).resolve() / "locks" / cache_dir_for(root).name  # no locks in object storage
    with exclusive_lock(locks / f".{job.run_name}.lock", f"embed run {job.run_name!r}"):
        return _run(job, root)


def _run(job: EmbedJobConfig, root: str) -> dict[str, Any]:
    import mlflow

    job = prepare(job)  # paths, data and Ray before the model is looked up
    tracking.setup(job.mlflow, job.output_dir)
    model_info = tracking.describe_model(job.model_uri)
    model = tracking.load_model(model_info["model_uri"])  # validates the URI before any Ray work
    if model.modality != job.data.modality:
        raise ValueError(f"model {model_info['model_uri']} is a{'n' if model.modality == 'image' else ''} "
                         f"{model.modality} model but data.source {job.data.source!r} is {job.data.modality} data")
    if job.embed.augment_rows is not None and model.modality == "text":
        raise ValueError("embed.augment_rows augments images; it does not apply to a text model")
    with stage_run("embed", job, input_run_id=model_info.get("model_run_id", ""),
                   input_uri=model_info["model_uri"], prepared=True) as stage:
        tracking.log_params({"model_uri": model_info["model_uri"], "data": to_dict(job.data),
                             "embed": to_dict(job.embed)})
        name = job.run_name or stage.run_id
        out = storage.join(root, name)
        mlflow.set_tag(tracking.TAG_EMBED_RUN_NAME, name)
        plan = {"model_uri": model_info["model_uri"], "splits": list(job.embed.splits),
                "rows_per_unit": job.embed.rows_per_file, "dtype": job.embed.dtype,
                "precision": job.embed.precision, "augment_rows": job.embed.augment_rows,
                "augment_seed": job.embed.augment_seed, "data": to_dict(job.data)}
        remote = storage.is_remote(out)
        if storage.is_file(storage.join(out, MANIFEST)) or (not remote and Path(out).exists()):
            manifest = _finished(out, plan)
        elif remote:  # no directory rename in object storage: the manifest, written last, completes the run
            manifest = _embed_into(job, model_info, model, stage, out, plan)
        else:
            manifest = _embed_into(job, model_info, model, stage, storage.join(root, f".{name}.partial"), plan)
            publish_dir(Path(root, f".{name}.partial"), Path(out))
        mlflow.log_text(storage.read_bytes(storage.join(out, MANIFEST)).decode(), MANIFEST)
        mlflow.log_metrics({f"rows_{s}": n for s, n in manifest["rows"].items()})
        stage.wrote(out)
        mlflow.log_metric("embed_wall_seconds", stage.seconds)
    point_latest(out)  # last: only an output whose run is recorded becomes the default input
    return {"run_id": stage.run_id, "path": out, "rows": manifest["rows"], "model_uri": model_info["model_uri"],
            "dim": model.dim, "seconds": stage.seconds}


def _embed_into(job: EmbedJobConfig, model_info: dict[str, Any], model, stage: StageRun, work: str,
                plan: dict[str, Any]) -> dict[str, Any]:
    """Embed every split into the work directory `work` (resuming what a killed run of this name wrote there),
    then write its manifest listing every unit file; returns the manifest."""
    _claim(work, plan)
    rows, verified, peaks = _embed_splits(job, model_info["model_uri"], stage, model.spec, work)
    manifest = {"stage": "embed", "embed_run_id": stage.run_id, **model_info, "dim": model.dim,
                "sizes": model.sizes, "model_spec": model.spec, "rows": rows, "dtype": job.embed.dtype,
                "precision": job.embed.precision,
                "augment": ({"rows": job.embed.augment_rows, "seed": job.embed.augment_seed}
                            if job.embed.augment_rows is not None else None),
                "verified": verified, "run_name": job.run_name,
                "peak_rss_bytes": {"driver": peak_rss_bytes() or 0, "actors": peaks},
                "data": to_dict(job.data), "files": embedding_files(work, job.embed.splits)}
    write_manifest(work, manifest)
    return manifest


def _finished(out: str, plan: dict[str, Any]) -> dict[str, Any]:
    """A finished run directory asked for again: the same settings, every listed file verified; it is left as it
    is (its manifest names the run that wrote it). Returns its manifest.

    Raises:
        ValueError: other settings, files that do not verify, or a directory of the layout before runs worked in
            `.<name>.partial` (no plan.json, or no manifest: a run that was interrupted), which cannot be resumed.
    """
    try:
        _check_plan(out, plan)
    except FileNotFoundError:
        raise _old_layout(out, storage.join(out, "plan.json")) from None
    try:
        manifest = read_manifest(out, stage="embed")
        for split, listing in manifest["files"].items():
            verify_files(storage.join(out, split), listing, listing)
    except FileNotFoundError:
        raise _old_layout(out, storage.join(out, MANIFEST)) from None
    except (ValueError, KeyError) as exc:
        raise ValueError(f"embed run directory {out} is finished but cannot be reused ({exc}); use another "
                         "run_name") from None
    print(f"[embed] {storage.name(out)} is finished (run {manifest['embed_run_id']}): its files verified, nothing to embed",
          flush=True)
    return manifest


def _old_layout(out: str, missing: str) -> ValueError:
    return ValueError(f"embed run directory {out} has no {storage.name(missing)} ({missing}): it is from an earlier version "
                      "of the platform, which wrote runs in place (an interrupted one has no manifest), and cannot be "
                      f"resumed or reused. Pick a new run_name, or move {out} out of the way (e.g. to {out}.old) and "
                      "run again")


def _embed_splits(job: EmbedJobConfig, model_uri: str, stage: StageRun, model_spec: dict[str, Any], out: str
                  ) -> tuple[dict[str, int], dict[str, dict], dict[str, int]]:
    """Embed every split the job names into <out>/<split>/ and verify its ids; returns rows, verification and
    the actors' peak memory by split."""
    rows, verified, peaks = {}, {}, {}
    for split in job.embed.splits:
        ids = _split_ids(job.data, model_spec, split)
        augmented = split == "train" and job.embed.augment_rows is not None
        if augmented:
            expand_ids(len(ids), job.embed.augment_rows)  # raises when the target is below the split's size
            ids = np.arange(job.embed.augment_rows, dtype=np.int64)
        seed = job.embed.augment_seed if augmented else None
        split_dir = storage.join(out, split)
        peaks[split] = _embed_split(job, model_uri, stage.tracking_uri, model_spec, split, ids, split_dir, seed,
                                    stage.started)
        verified[split] = verify_split(split_dir, ids)
        rows[split] = len(ids)
    return rows, verified, peaks


def _claim(out: str, plan: dict[str, Any]) -> None:
    """Record what this run directory embeds (created exclusively, complete or not at all; in object storage one
    PUT, under the run's lock), or check a rerun asks for the same (else its units would mix)."""
    import json

    data = json.dumps(plan, indent=1).encode()
    if storage.is_remote(out):
        if not storage.is_file(storage.join(out, "plan.json")):
            storage.write_bytes(storage.join(out, "plan.json"), data)
            return
    else:
        Path(out).mkdir(parents=True, exist_ok=True)
        if create_exclusive(Path(out, "plan.json"), data):
            return
    _check_plan(out, plan)


def _check_plan(out: str, plan: dict[str, Any]) -> None:
    import json

    before = json.loads(storage.read_bytes(storage.join(out, "plan.json")))
    changed = sorted(key for key in set(plan) | set(before) if plan.get(key) != before.get(key))
    if changed:
        raise ValueError(f"embed run directory {out} was started with other settings ({', '.join(changed)} "
                         "differ); use another run_name, or the same settings to resume it")


def _embed_split(job, model_uri: str, tracking_uri: str, model_spec: dict[str, Any], split: str, ids: np.ndarray,
                 split_dir: str, augment_seed: int | None, started: float) -> int:
    """Embed the units of `split` not yet written (and verified), on an actor pool, one progress line per unit.
    Returns the largest peak resident memory an actor reported (0 when nothing was left to embed)."""
    import ray

    _remove_stale(split_dir)  # a unit cut short by a kill: written again below
    units = plan_units(len(ids), job.embed.rows_per_file)
    pending = [(u, lo, hi) for u, lo, hi in units if not unit_written(unit_path(split_dir, u), ids[lo:hi])]
    todo = sum(hi - lo for _, lo, hi in pending)
    print(f"[embed] {split}: {len(ids):,} rows in {len(units)} unit{'s' * (len(units) != 1)}; "
          f"{len(units) - len(pending)} already written "
          f"and verified, embedding {len(pending)} ({todo:,} rows)", flush=True)
    if not pending:
        return 0
    quiet_ray_data()  # one line per unit / quarter epoch instead of Ray Data's operator dumps
    items = [{"unit": u, "lo": lo, "hi": hi} for u, lo, hi in pending]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        UnitEmbedder, batch_size=1, batch_format="numpy",
        fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": tracking_uri, "data": to_dict(job.data),
                               "model_spec": model_spec, "split": split, "out_dir": split_dir,
                               "batch_size": job.embed.batch_size, "threads": int(job.embed.cpus_per_actor),
                               "dtype": job.embed.dtype, "precision": job.embed.precision,
                               "augment_seed": augment_seed},
        compute=ray.data.ActorPoolStrategy(size=min(job.embed.num_actors, len(items))),
        num_cpus=job.embed.cpus_per_actor, num_gpus=job.embed.gpus_per_actor)
    t0, done, units_done, actor_peak = time.time(), 0, 0, 0
    for row in ds.iter_rows():
        done += int(row["rows"])
        units_done += 1
        actor_peak = max(actor_peak, int(row["peak_rss"]))
        rate = done / max(time.time() - t0, 1e-9)
        eta = (todo - done) / rate if rate > 0 else float("inf")
        print(f"[embed] {split}: {done:,} / {todo:,} rows ({units_done}/{len(pending)} units), {rate:,.0f} rows/s, "
              f"ETA {eta:.0f}s ({time.time() - started:.0f}s so far)", flush=True)
    _remove_stale(split_dir)  # an actor lost mid-unit (its unit was written again)
    return actor_peak


def _remove_stale(split_dir: str) -> None:
    """Remove the temporary files of units cut short, on disk (an upload cut short leaves no object)."""
    if not storage.is_remote(split_dir):
        Path(split_dir).mkdir(parents=True, exist_ok=True)
        for stale in Path(split_dir).glob(".part-*.tmp-*"):
            stale.unlink()


def _split_ids(data, model_spec: dict[str, Any], split: str) -> np.ndarray:
    """A split's row ids in order, what the driver needs to plan and verify units: from metadata for images (the
    id columns alone, or positions); a text split is read whole."""
    ids = split_source(data, model_spec, split)[0].ids()
    ordered = np.sort(ids)
    repeated = int((ordered[1:] == ordered[:-1]).sum())
    if repeated:
        raise ValueError(f"{data.source} data at {data.root}: {repeated} ids of the {split} split appear more than "
                         "once (the id column must be unique: embeddings are kept, found and verified by id)")
    return ids


def split_source(data, model_spec: dict[str, Any], split: str):
    """A split's rows by position (a `SplitReader` over images where they live; text, tokenised by the model, is
    held in memory as `TableRows`: id, label, document) and the image shape (None: text)."""
    import pyarrow as pa

    if data.modality == "text":
        rows = load_text_split(data, split)
        return TableRows(pa.table({"id": pa.array(rows["id"], pa.int64()),
                                   "label": pa.array(rows["label"], pa.int64()),
                                   "document": pa.array(rows["document"], pa.string())})), None
    model = _model_cfg(model_spec)
    shape = (model.in_channels, model.image_size, model.image_size)
    return open_split(data, shape, split), shape


def _model_cfg(spec: dict[str, Any]):
    return from_dict(ModelConfig, spec, prefix="model.")
