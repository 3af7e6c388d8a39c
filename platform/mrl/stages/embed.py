"""The embed stage: Ray Data batch inference with an actor pool, writing sharded Parquet.

Output layout (one directory per embed run, `latest` pointing at the newest):

    <output_dir>/embeddings/<mlflow run id>/
        manifest.json             model URI/version, d, sizes, rows per split, producing run ids
        <split>/*.parquet         columns id (int64), label (int64), embedding (fixed_size_list<float32>[d])

Image models embed the split's images; text models embed its `document` texts, tokenised by the model's own
tokenizer (the one registered with it). Ids are the data's: row positions for images, the `id` column for text.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from mrl.data.preprocess import embed_images


class Embedder:
    """Ray Data callable class: loads the model once per actor, maps image or text batches to embeddings."""

    def __init__(self, model_uri: str, tracking_uri: str, image_shape: tuple[int, ...] | None, threads: int = 1,
                 dtype: str = "float32", precision: str = "auto"):
        import mlflow
        import torch

        torch.set_num_threads(max(1, threads))
        mlflow.set_tracking_uri(tracking_uri)
        from mrl.artifacts.tracking import load_model
        from mrl.data.preprocess import inference_model

        self.image_shape = tuple(image_shape or ())  # (C, H, W): Parquet/Arrow carries flattened pixels
        self.dtype = dtype
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = inference_model(load_model(model_uri), self.device, precision)

    def __call__(self, batch):
        """batch: a pyarrow Table with id, label and image (flattened uint8 pixels) or document (text)
        -> id, label, embedding."""
        import pyarrow as pa

        if "document" in batch.column_names:
            z = self.model.embed_texts(batch.column("document").to_pylist())  # (B, d)
        else:
            flat = batch.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            z = embed_images(self.model, flat.reshape((-1, *self.image_shape)), self.device)  # (B, d)
        values = pa.array(z.ravel().astype(self.dtype), pa.float16() if self.dtype == "float16" else pa.float32())
        vectors = pa.FixedSizeListArray.from_arrays(values, z.shape[1])
        return pa.table({"id": batch.column("id"), "label": batch.column("label"), "embedding": vectors})


def augment_batch(batch, n_base: int, target_rows: int, seed: int, image_shape: tuple[int, ...]):
    """Ray Data function: base rows (id, label, image) -> the originals plus their augmented copies.

    Base row i is emitted as ids i, i + n_base, i + 2 n_base, ... below `target_rows`; see `mrl.data.augment`.
    """
    from mrl.data.augment import augment

    base_ids = batch.column("id").to_numpy()
    labels = batch.column("label").to_numpy()
    images = batch.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    images = images.reshape((-1, *image_shape))
    copies = -(-target_rows // n_base)
    ids = (base_ids[None, :] + n_base * np.arange(copies)[:, None]).ravel()  # copy-major
    src = np.tile(np.arange(len(base_ids)), copies)
    keep = ids < target_rows
    ids, src = ids[keep], src[keep]
    return _split_table(augment(images[src], ids, seed, n_base), labels[src], ids)


def _split_table(images: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None):
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401  (registers compute kernels Ray Data uses)

    flat = images.reshape(len(images), -1)  # (N, C*H*W) uint8
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.uint8()), flat.shape[1])
    ids = np.arange(len(labels)) if ids is None else ids
    return pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64()),
                     "image": pixels})


def run_embed(job, model_uri: str | None = None) -> dict[str, Any]:
    """The embed stage for an `EmbedJobConfig`.

    Args:
        job: the validated config.
        model_uri: overrides job.model_uri (the pipeline passes the version it just registered).

    Returns:
        {"run_id", "path", "rows": {split: n}, "model_uri", "dim", "seconds"}.
    """
    import mlflow
    import ray

    from mrl.artifacts import tracking
    from mrl.artifacts.manifest import MANIFEST, point_latest, write_manifest
    from mrl.config import check_paths
    from mrl.configio import to_dict
    from mrl.data.augment import expand_ids
    from mrl.data.sources import prepare_text_data
    from mrl.runtime import ensure_ray

    check_paths(job)  # before any Ray work
    job = dataclasses.replace(job, data=prepare_text_data(job.data))
    ensure_ray(job.ray)
    uri = tracking.setup(job.mlflow, job.output_dir)
    model_info = tracking.describe_model(model_uri or job.model_uri)
    model = tracking.load_model(model_info["model_uri"])  # validates the URI before any Ray work
    model_spec = model.spec
    if model.modality != job.data.modality:
        raise ValueError(f"model {model_info['model_uri']} is a{'n' if model.modality == 'image' else ''} "
                         f"{model.modality} model but data.source {job.data.source!r} is {job.data.modality} data")
    if job.embed.augment_rows is not None and model.modality == "text":
        raise ValueError("embed.augment_rows augments images; it does not apply to a text model")
    started = time.time()
    with mlflow.start_run(run_name="embed", tags={"mrl.stage": "embed",
                                                  "mrl.input_uri": model_info["model_uri"],
                                                  "mrl.input_run_id": model_info.get("model_run_id", "")}) as run:
        tracking.log_params({"model_uri": model_info["model_uri"], "data": to_dict(job.data),
                             "embed": to_dict(job.embed)})
        out = Path(job.output_dir).resolve() / "embeddings" / run.info.run_id
        rows = {}
        for split in job.embed.splits:
            table, image_shape = _read_split(job.data, model_spec, split)
            labels = table.column("label")
            n_rows = len(labels)
            grow = split == "train" and job.embed.augment_rows is not None
            if grow:
                n_rows = job.embed.augment_rows
                expand_ids(len(labels), n_rows)  # raises when the target is below the split's size
            # Several blocks so every actor of the pool gets work: up to 4 output batches per block.
            per_row = n_rows / len(labels)
            step = max(1, min(int(4 * job.embed.batch_size / per_row) or 1, -(-len(labels) // job.embed.num_actors)))
            ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)])
            if grow:
                ds = ds.map_batches(augment_batch, fn_kwargs={
                    "n_base": len(labels), "target_rows": n_rows, "seed": job.embed.augment_seed,
                    "image_shape": image_shape}, batch_size=None, batch_format="pyarrow", num_cpus=0.5)
            ds = ds.map_batches(
                Embedder, fn_constructor_kwargs={"model_uri": model_info["model_uri"], "tracking_uri": uri,
                                                 "image_shape": image_shape,
                                                 "threads": int(job.embed.cpus_per_actor),
                                                 "dtype": job.embed.dtype, "precision": job.embed.precision},
                compute=ray.data.ActorPoolStrategy(size=job.embed.num_actors), batch_size=job.embed.batch_size,
                batch_format="pyarrow", num_cpus=job.embed.cpus_per_actor, num_gpus=job.embed.gpus_per_actor)
            ds.write_parquet(str(out / split), min_rows_per_file=min(job.embed.rows_per_file, n_rows),
                             max_rows_per_file=job.embed.rows_per_file)
            rows[split] = n_rows
            print(f"[embed] {split}: {n_rows} rows embedded to {out / split} "
                  f"({time.time() - started:.0f}s so far)", flush=True)
        manifest = {"stage": "embed", "embed_run_id": run.info.run_id, **model_info, "dim": model.dim,
                    "sizes": model.sizes, "model_spec": model_spec, "rows": rows, "dtype": job.embed.dtype,
                    "precision": job.embed.precision,
                    "augment": ({"rows": job.embed.augment_rows, "seed": job.embed.augment_seed}
                                if job.embed.augment_rows is not None else None),
                    "data": {"source": job.data.source, "path": job.data.root}}
        write_manifest(out, manifest)
        point_latest(out)
        mlflow.log_artifact(str(out / MANIFEST))
        mlflow.log_metrics({f"rows_{s}": n for s, n in rows.items()})
        mlflow.set_tag("mrl.output_path", str(out))
        seconds = time.time() - started
        mlflow.log_metric("embed_wall_seconds", seconds)
    return {"run_id": run.info.run_id, "path": str(out), "rows": rows, "model_uri": model_info["model_uri"],
            "dim": model.dim, "seconds": seconds}


def _read_split(data, model_spec: dict[str, Any], split: str):
    """One split as a pyarrow table (id, label, image pixels or document text) and the image shape (None: text)."""
    import pyarrow as pa

    from mrl.data.sources import load_split, load_text_split

    if data.modality == "text":
        rows = load_text_split(data, split)
        return pa.table({"id": pa.array(rows["id"], pa.int64()), "label": pa.array(rows["label"], pa.int64()),
                         "document": pa.array(rows["document"], pa.string())}), None
    images, labels = load_split(data, _model_cfg(model_spec), split)
    return _split_table(images, labels), images.shape[1:]


def _model_cfg(spec: dict[str, Any]):
    from mrl.config import ModelConfig
    from mrl.configio import from_dict

    return from_dict(ModelConfig, spec, prefix="model.")
