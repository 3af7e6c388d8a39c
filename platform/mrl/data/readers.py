"""Streaming readers: a split known by its metadata, its rows read where the data lives, by the workers.

The driver opens a split (`mrl.data.sources.open_split`, through the source's entry: `open_parquet`,
`open_folder`) from metadata alone: the Parquet footers of its shards (row counts) or
the file list of an image folder; no image is read there. Work is described by read tasks, small dicts (a shard
and a row range in it, or a chunk of the file list) that ship to any worker, and each worker reads its own rows:
`read_task` (one task), `SplitReader.read(lo, hi)` (rows by position: the embed stage's units) or
`mrl.data.datasource.ray_dataset` (the split as a Ray Data dataset, one read task per block: the training stream;
why not Ray Data's `read_parquet` / `read_images` is said there).

Layouts (`data.source`):
- parquet: <path>/<split>/*.parquet, or one <path>/<split>.parquet; columns `label`, `image` (flattened uint8
  pixels as a list, or encoded image bytes: PNG, JPEG, ...) and optionally `id` (int64; else the row's position).
- image_folder: <path>/<split>/<class>/<image>; classes are the sorted directory names (ImageNet: the wnids).
- fashion_mnist: the IDX files, converted once into Parquet shards (`convert_fashion_mnist`).

Positions count a split's rows in file order (shards sorted by name; images by class, then file name), cut at
`train_limit` / `test_limit`; they are the ids wherever the data has no id column, stable across reruns as long
as the data does not change. The held-out split is "test" to the stages and `data.test_split` on disk.

Every path may be a local one or an object-storage URI (`s3://bucket/prefix`, `gs://...`; `mrl.storage`): the
driver lists and reads footers there, and each worker opens its own files there, with the credentials of its
node's environment.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrl import storage
from mrl.data.formats import IMAGE_SUFFIXES, DataError, load_fashion_mnist, train_val_indices
from mrl.data.preprocess import decode_image

SHARD_ROWS = 10_000  # rows per converted Fashion-MNIST shard
ROW_GROUP_ROWS = 1_024  # a reader of a row range decodes whole row groups: keep them small
TASK_ROWS = 2_048  # rows per read task (one Ray Data block of the training stream)
COMPLETE = "_complete.json"  # written last by a conversion: the shards under it are whole


@dataclass(frozen=True)
class SplitReader:
    """A split's metadata and how to read any range of its rows.

    kind "parquet": `paths` are shards holding `counts` rows each; kind "files": `paths` are images, one row
    each, of class `labels`. `n` is the number of rows (after the limit); `shape` is (C, H, W).
    """

    name: str
    kind: str
    paths: tuple[str, ...]
    counts: tuple[int, ...]
    labels: np.ndarray | None
    shape: tuple[int, int, int]
    n: int
    has_id: bool

    def tasks(self, lo: int = 0, hi: int | None = None, rows: int = TASK_ROWS, shuffle_seed: int | None = None,
              positions: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Read tasks covering rows lo..hi (positions), each of at most `rows` rows within one shard.

        An image folder's tasks take consecutive files (one or two classes each), or, with `shuffle_seed`, files
        in a seeded random order, so a training stream's blocks mix classes (random reads cost nothing more
        there; in Parquet shards the writer's row order stays). `positions` restricts an image folder's tasks
        to those rows (a part of the split: its other files are never opened); Parquet tasks still cover lo..hi.
        """
        hi = self.n if hi is None else min(hi, self.n)
        out = []
        if self.kind == "files":
            order = np.arange(lo, hi) if positions is None else np.asarray(positions, dtype=np.int64)
            if shuffle_seed is not None:
                order = np.random.default_rng(shuffle_seed).permutation(order)
            for start in range(0, len(order), rows):
                chunk = order[start:start + rows]
                out.append({"kind": "files", "paths": [self.paths[i] for i in chunk],
                            "labels": self.labels[chunk].tolist(), "ids": chunk.tolist(), "lo": 0,
                            "hi": len(chunk), "pos": int(chunk[0])})
            return out
        offset = 0
        for path, count in zip(self.paths, self.counts):
            a, b = max(lo, offset), min(hi, offset + count)
            for start in range(a, b, rows):
                end = min(b, start + rows)
                out.append({"kind": "parquet", "paths": [path], "labels": [], "ids": [], "lo": start - offset,
                            "hi": end - offset, "pos": start})
            offset += count
            if offset >= hi:
                break
        return out

    def read(self, lo: int, hi: int):
        """Rows lo..hi as a pyarrow table (id, label, image: C*H*W uint8 per row), reading only what covers them."""
        import pyarrow as pa

        parts = [read_task(t, self.shape) for t in self.tasks(lo, hi, rows=max(1, hi - lo))]
        return pa.concat_tables(parts) if parts else image_table(np.zeros((0, *self.shape), np.uint8),
                                                                 np.zeros(0, np.int64), np.zeros(0, np.int64))

    def ids(self) -> np.ndarray:
        """Every row's id in position order: the id columns alone where the shards have one, else positions."""
        if not self.has_id:
            return np.arange(self.n, dtype=np.int64)

        out, left = [], self.n
        for path in self.paths:
            if left <= 0:
                break
            ids = read_columns(path, ["id"]).column("id").to_numpy()[:left]
            out.append(ids.astype(np.int64))
            left -= len(ids)
        return np.concatenate(out) if out else np.zeros(0, np.int64)


class TableRows:
    """An in-memory table read by position like a `SplitReader`: text splits (tokenised whole), tests, and the
    embed benchmark's plain loop."""

    def __init__(self, table):
        self.table, self.n = table, table.num_rows

    def read(self, lo: int, hi: int):
        return self.table.slice(lo, hi - lo)

    def ids(self) -> np.ndarray:
        return self.table.column("id").to_numpy()


def image_table(images: np.ndarray, labels: np.ndarray, ids: np.ndarray):
    """uint8 images (N, C, H, W) -> a pyarrow table: id, label, image (fixed-size list of C*H*W uint8)."""
    import pyarrow as pa

    flat = images.reshape(len(images), -1)
    width = int(np.prod(images.shape[1:]))
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.uint8()), width)
    return pa.table({"id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64()), "image": pixels})


def read_task(task: dict[str, Any], shape: tuple[int, ...]):
    """Read one task's rows (see `SplitReader.tasks`): a pyarrow table id, label, image (C*H*W uint8 per row).

    Raises:
        DataError: naming the file, when pixels do not match `shape` or an image does not decode.
    """

    lo, hi = int(task["lo"]), int(task["hi"])
    positions = task_positions(task)
    if task["kind"] == "files":  # a chunk of an image folder's file list
        images = np.stack([_decode(path, shape) for path in task["paths"][lo:hi]]) if hi > lo \
            else np.zeros((0, *shape), np.uint8)
        return image_table(images, np.asarray(task["labels"][lo:hi], np.int64), positions)


    path = task["paths"][0]
    file = parquet_file(path)
    names = file.schema_arrow.names
    groups, first, offset = [], None, 0
    for g in range(file.num_row_groups):
        rows = file.metadata.row_group(g).num_rows
        if offset + rows > lo and offset < hi:
            groups.append(g)
            first = offset if first is None else first
        offset += rows
    columns = ["label", "image"] + (["id"] if "id" in names else [])
    table = file.read_row_groups(groups, columns=columns).slice(lo - (first or 0), hi - lo)
    column = table.column("image")
    if column.type in _binary_types():
        images = np.stack([decode_image(b, shape[1], shape[0]) for b in column.to_pylist()]) if len(table) \
            else np.zeros((0, *shape), np.uint8)
    else:
        flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        if flat.size != len(table) * int(np.prod(shape)):
            raise DataError(f"{path}: column image holds {flat.size} values in {len(table)} rows, expected "
                            f"{shape[0]}x{shape[1]}x{shape[2]} per row (model.in_channels, model.image_size)")
        images = flat.astype(np.uint8, copy=False).reshape((-1, *shape))
    ids = table.column("id").to_numpy().astype(np.int64) if "id" in names else positions
    return image_table(images, table.column("label").to_numpy().astype(np.int64), ids)


def task_positions(task: dict[str, Any]) -> np.ndarray:
    """The split positions of a task's rows, in the order it reads them."""
    if task["kind"] == "files":
        return np.asarray(task["ids"], dtype=np.int64)[int(task["lo"]):int(task["hi"])]
    return np.arange(int(task["pos"]), int(task["pos"]) + int(task["hi"]) - int(task["lo"]), dtype=np.int64)


def parquet_file(path: str | Path):
    """A `pyarrow.parquet.ParquetFile` of a local path or an object-storage URI."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(storage.open_input(path) if storage.is_remote(path) else path)


def read_columns(path: str | Path, columns: list[str]):
    """Columns of one Parquet file, local or in object storage, as a pyarrow table."""
    import pyarrow.parquet as pq

    fs, inner = storage.resolve(path)
    return pq.read_table(inner, columns=columns, filesystem=fs)


def _binary_types():
    import pyarrow as pa

    return (pa.binary(), pa.large_binary())


def _decode(path: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        return decode_image(storage.read_bytes(path) if storage.is_remote(path) else path, shape[1], shape[0])
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None


def open_folder(base: str | Path, split: str, shape: tuple[int, int, int], limit: int | None) -> SplitReader:
    """The reader of an image folder `base` (<base>/<class>/<image>) holding split `split`, from its file list.

    Args:
        base: the split's directory (a local path or a URI).
        split: "train" or "test", the stages' name of the split.
        shape: (C, H, W) the model takes.
        limit: read only the first rows (None: all).
    """
    paths, labels = list_image_folder(base)
    n = len(paths) if limit is None else min(limit, len(paths))
    return SplitReader(split, "files", tuple(paths), (), labels, shape, n, False)


def open_parquet(base: str | Path, on_disk: str, split: str, shape: tuple[int, int, int], limit: int | None
                 ) -> SplitReader:
    """The reader of split `on_disk` of Parquet image data under `base` (`parquet_shards`), from the shards'
    footers.

    Args:
        base: the data's root (a local path or a URI).
        on_disk: the split's name there (<base>/<on_disk>/*.parquet or <base>/<on_disk>.parquet).
        split: "train" or "test", the stages' name of the split.
        shape: (C, H, W) the model takes.
        limit: read only the first rows (None: all).

    Raises:
        DataError: naming the path and the layout expected there.
    """
    shards = parquet_shards(base, on_disk)
    counts, has_id = [], True
    for path in shards:
        meta = parquet_file(path)
        counts.append(meta.metadata.num_rows)
        names = meta.schema_arrow.names
        missing = {"image", "label"} - set(names)
        if missing:
            raise DataError(f"{path}: no column {sorted(missing)}; expected image (pixels or encoded bytes), label, "
                            "and optionally id")
        has_id = has_id and "id" in names
    total = sum(counts)
    n = total if limit is None else min(limit, total)
    return SplitReader(split, "parquet", tuple(map(str, shards)), tuple(counts), None, shape, n, has_id)


TEXT_COLUMNS = ("id", "label", "query", "document")


def read_text_rows(split_dir: str | Path, what: str, hint: str) -> dict[str, Any]:
    """Every row of a text split, <split_dir>/*.parquet with columns id, label, query and document, sorted by id.

    Args:
        split_dir: the split's directory (a local path or a URI).
        what: what the data is, for errors (e.g. "text_parquet split").
        hint: how to make the data, for errors.

    Returns:
        {"id": int64 array, "label": int64 array, "query": list[str], "document": list[str]}.

    Raises:
        DataError: the directory, its shards or a column is missing.
    """
    import pyarrow as pa

    files = storage.files(split_dir, [".parquet"]) if storage.is_dir(split_dir) else []
    if not files:
        raise DataError(f"{what} {split_dir} not found (expected {split_dir}/*.parquet with columns "
                        f"{', '.join(TEXT_COLUMNS)}); {hint}")
    for path in files:
        missing = set(TEXT_COLUMNS) - set(parquet_file(path).schema_arrow.names)
        if missing:
            raise DataError(f"{path}: no column {sorted(missing)}; a text split has columns {', '.join(TEXT_COLUMNS)}")
    table = pa.concat_tables([read_columns(f, list(TEXT_COLUMNS)) for f in files]).sort_by("id")
    return {
        "id": table.column("id").to_numpy().astype(np.int64),
        "label": table.column("label").to_numpy().astype(np.int64),
        "query": table.column("query").to_pylist(),
        "document": table.column("document").to_pylist(),
    }


def parquet_shards(base: str | Path, split: str) -> list[str]:
    """<base>/<split>/*.parquet sorted by name, or [<base>/<split>.parquet] (local paths or URIs)."""
    directory, single = storage.join(base, split), storage.join(base, f"{split}.parquet")
    if storage.is_dir(directory):
        shards = [f for f in storage.files(directory) if f.endswith(".parquet")]
        if not shards:
            raise DataError(f"{directory} holds no .parquet shards")
        return shards
    if storage.is_file(single):
        return [single]
    raise DataError(f"no Parquet data for split {split!r}: expected {directory}/*.parquet or {single}, with "
                    "columns image (pixels or encoded bytes) and label")


def list_image_folder(base: str | Path) -> tuple[list[str], np.ndarray]:
    """The images under base/<class>/ in (class, file name) order, and their class indices (a local path: one
    directory listing a class; a URI: one listing request per 1,000 objects)."""
    if not storage.is_dir(base):
        raise DataError(f"image folder {base} does not exist; expected <data.path>/<split>/<class>/<image>")
    if storage.is_remote(base):
        classes = [name for name, is_directory in storage.entries(base) if is_directory]
    else:  # a class may be a symlinked directory
        classes = sorted(p.name for p in Path(base).iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"image folder {base} has no class sub-directories")
    paths, labels = [], []
    for label, name in enumerate(classes):
        if storage.is_remote(base):
            files = [storage.name(f) for f in storage.files(storage.join(base, name), IMAGE_SUFFIXES)]
        else:
            files = sorted(f for f in os.listdir(Path(base, name)) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
        paths += [storage.join(base, name, f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"image folder {base} holds no images ({sorted(IMAGE_SUFFIXES)})")
    return paths, np.asarray(labels, dtype=np.int64)


def convert_fashion_mnist(idx_root: str | Path, out_root: str | Path, rows_per_shard: int = SHARD_ROWS) -> Path:
    """Convert the Fashion-MNIST IDX files under `idx_root` into Parquet shards <out_root>/{train,test}/, once.

    Each split is written into a temporary directory and renamed into place with a `_complete.json` (row
    counts), so concurrent converters (Tune trials, several jobs) never see half a split; a split already
    complete is left as it is. `out_root` in object storage: each split is converted locally and uploaded, its
    `_complete.json` last (two converters at once both upload the same bytes).

    Returns:
        out_root.
    """
    if storage.is_remote(out_root):
        import tempfile

        for split in ("train", "test"):
            if not storage.is_file(storage.join(out_root, split, COMPLETE)):
                with tempfile.TemporaryDirectory(prefix="mrl-fashion-mnist-") as local:
                    _convert_split(idx_root, Path(local), split, rows_per_shard)
                    storage.upload_dir(Path(local, split), storage.join(out_root, split), last=[COMPLETE])
        return out_root
    out_root = Path(out_root)
    for split in ("train", "test"):
        if not (out_root / split / COMPLETE).is_file():
            _convert_split(idx_root, out_root, split, rows_per_shard)
    return out_root


def _convert_split(idx_root: str | Path, out_root: Path, split: str, rows_per_shard: int) -> None:
    """One split of `convert_fashion_mnist` on local disk: written under a temporary name, renamed into place."""
    import shutil

    import pyarrow.parquet as pq

    final = out_root / split
    images, labels = load_fashion_mnist(idx_root, split)
    tmp = out_root / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, lo in enumerate(range(0, len(labels), rows_per_shard)):
        hi = min(len(labels), lo + rows_per_shard)
        table = image_table(images[lo:hi], labels[lo:hi], np.arange(lo, hi, dtype=np.int64))
        pq.write_table(table, tmp / f"part-{i:05d}.parquet", row_group_size=ROW_GROUP_ROWS)
    (tmp / COMPLETE).write_text(json.dumps({"rows": int(len(labels)), "source": str(idx_root)}))
    try:
        os.rename(tmp, final)
    except OSError:  # another converter finished first
        if not (final / COMPLETE).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=8)
def _val_positions(n: int, val_fraction: float, seed: int) -> np.ndarray:
    return train_val_indices(n, val_fraction, seed)[1]


def select_rows(positions: np.ndarray, part: str, n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Mask of the `positions` in the training part ("train") or the validation part ("val") of a split of n
    rows, the same seeded split as `mrl.data.sources.train_val_indices`."""
    val = _val_positions(n, val_fraction, seed)
    if len(val) == 0:
        return np.full(len(positions), part != "val")
    at = np.searchsorted(val, positions)
    is_val = (at < len(val)) & (val[np.minimum(at, len(val) - 1)] == positions)
    return is_val if part == "val" else ~is_val


def read_rows(tasks: list[dict[str, Any]], shape: tuple[int, ...], part: str | None = None, n: int = 0,
              val_fraction: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Read tasks -> their rows as numpy columns id, label, image (N, C, H, W) uint8, keeping only the training
    or validation part when `part` is given (of a split of n rows, `select_rows`)."""
    import pyarrow as pa

    table = pa.concat_tables([read_task(task, shape) for task in tasks])
    ids = table.column("id").to_numpy()
    labels = table.column("label").to_numpy()
    images = table.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape((-1, *shape))
    if part is not None:
        positions = np.concatenate([task_positions(task) for task in tasks])
        keep = select_rows(positions, part, n, val_fraction, seed)
        ids, labels, images = ids[keep], labels[keep], images[keep]
    return {"id": ids, "label": labels, "image": images}
