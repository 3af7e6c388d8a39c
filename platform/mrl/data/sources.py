"""Labelled data as arrays: Fashion-MNIST IDX files, image folders and Parquet tables.

Every source yields `images` (N, C, H, W) uint8 and `labels` (N,) int64 for a split ("train" or "test").
Row ids are the row positions in the split, stable across stages (embeddings keep them beside vectors).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Fashion-MNIST pixel statistics (train split), used to standardise inputs.
MEAN, STD = 0.2860, 0.3530
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


class DataError(FileNotFoundError):
    """Data is missing or malformed; the message names the path and how to get the data."""


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{root / stem}[.gz] not found: Fashion-MNIST is expected there; install it with "
        "`apt-get install -y dataset-fashion-mnist` (files go to /usr/share/datasets/fashion-mnist) "
        "or set data.path to a directory holding the four IDX files"
    )


def load_fashion_mnist(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST `split` from IDX files under `root`: images (N, 1, 28, 28) uint8, labels (N,) int64."""
    root = Path(root)
    images_file, labels_file = IDX_FILES[split]
    images = read_idx(_find(root, images_file))[:, None]  # (N, 1, 28, 28)
    labels = read_idx(_find(root, labels_file)).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels


def load_image_folder(root: str | Path, split: str, image_size: int, in_channels: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Images under root/split/<class>/* in memory; classes are the sorted sub-directory names."""
    from mrl.data.readers import list_image_folder, read_task

    paths, labels = list_image_folder(Path(root) / split)
    table = read_task({"kind": "files", "paths": paths, "labels": labels.tolist(), "ids": list(range(len(paths))),
                       "lo": 0, "hi": len(paths), "pos": 0}, (in_channels, image_size, image_size))
    return _arrays(table, (in_channels, image_size, image_size))


def load_parquet(root: str | Path, split: str, image_size: int, in_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """root/split/*.parquet or root/split.parquet in memory: columns `image` (C*H*W uint8 values per row, or
    encoded image bytes) and `label` (int)."""
    from mrl.config import DataConfig
    from mrl.data.readers import open_split

    shape = (in_channels, image_size, image_size)
    named = {} if split == "train" else {"test_split": split}
    reader = open_split(DataConfig(source="parquet", path=str(root), **named), shape,
                        "train" if split == "train" else "test")
    return _arrays(reader.read(0, reader.n), shape)


def _arrays(table, shape) -> tuple[np.ndarray, np.ndarray]:
    pixels = table.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return pixels.reshape((-1, *shape)), table.column("label").to_numpy().astype(np.int64)


def load_split(data, model, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load `split` ("train"/"test") as configured by a `DataConfig` and a `ModelConfig`, with limits applied.

    Returns:
        images (N, C, H, W) uint8 and labels (N,) int64.
    """
    on_disk = split if split == "train" else data.test_split
    if data.source == "fashion_mnist":
        images, labels = load_fashion_mnist(data.root, split)
    elif data.source == "image_folder":
        images, labels = load_image_folder(data.root, on_disk, model.image_size, model.in_channels)
    else:
        images, labels = load_parquet(data.root, on_disk, model.image_size, model.in_channels)
    if images.shape[1:] != (model.in_channels, model.image_size, model.image_size):
        raise DataError(f"{data.source} images have shape {images.shape[1:]}, but the model expects "
                        f"({model.in_channels}, {model.image_size}, {model.image_size}); set model.in_channels "
                        "and model.image_size")
    limit = data.train_limit if split == "train" else data.test_limit
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def train_val_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of range(n) into train and validation row indices."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> standardised float32, the model's input."""
    return ((images.astype(np.float32) / 255.0) - MEAN) / STD


def prepare_data(data, output_dir: str | Path):
    """A `DataConfig` ready for workers that may run on other nodes, prepared on the driver before any Ray work:
    absolute paths; Fashion-MNIST's IDX files converted once into Parquet shards (at `data.shards_path`, default
    <output_dir>/data/fashion-mnist); WordNet converted into text shards (`prepare_text_data`)."""
    import dataclasses

    if data.modality == "text":
        return prepare_text_data(data)
    if data.source == "fashion_mnist":
        from mrl.data.readers import convert_fashion_mnist

        shards = Path(data.shards_path or Path(output_dir) / "data" / "fashion-mnist").resolve()
        convert_fashion_mnist(data.root, shards)
        return dataclasses.replace(data, path=str(Path(data.root).resolve()), shards_path=str(shards))
    return dataclasses.replace(data, path=str(Path(data.root).resolve()))


def prepare_text_data(data):
    """A text `DataConfig` with its shards in place and an absolute path (workers may run elsewhere).

    wordnet: converts the WordNet database into `data.path` on first use (a cache hit afterwards, about a
    second otherwise); text_parquet: checks nothing more than the reader will. Image sources pass through.
    """
    import dataclasses

    if data.modality != "text":
        return data
    path = str(Path(data.root).resolve())
    if data.source == "wordnet":
        from mrl.data.wordnet import write_wordnet_parquet

        write_wordnet_parquet(path, data.wordnet_root, seed=data.seed, test_fraction=data.test_fraction)
    return dataclasses.replace(data, path=path)


def load_text_split(data, split: str) -> dict:
    """Text rows of `split` as configured by a text `DataConfig`, with limits applied.

    A limit keeps a seeded random subset (`data.seed`), not the first rows: WordNet's ids are sorted by part of
    speech, so the first rows would all be adjectives.

    Returns:
        {"id": int64 (N,), "label": int64 (N,), "query": [str] * N, "document": [str] * N}, sorted by id.
    """
    from mrl.data.wordnet import read_text_split

    data = prepare_text_data(data)
    rows = read_text_split(data.root, split)
    limit = data.train_limit if split == "train" else data.test_limit
    if limit is None or limit >= len(rows["id"]):
        return rows
    keep = np.sort(np.random.default_rng(data.seed).choice(len(rows["id"]), size=limit, replace=False))
    return {key: value[keep] if isinstance(value, np.ndarray) else [value[i] for i in keep]
            for key, value in rows.items()}
