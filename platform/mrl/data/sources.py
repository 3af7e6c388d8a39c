"""Data sources: `DATA_SOURCES` names every kind of labelled data a job can read (`data.source`), and each entry
owns what is particular to it: its modality, its default root, the paths a job checks before it starts, the
preparation the driver does before any Ray work, and how a split is read. Adding a source is one
`DATA_SOURCES.register(name)(DataSource(...))` (here or in any module) plus its test: configs accept the name,
and every stage reads it through the functions below.

Splits are "train" and "test" to the stages; on disk the held-out one is `data.test_split` (ImageNet: val), for
image and text sources alike. Image sources give a `SplitReader` (rows read where the data lives, by the
workers) or, for in-process use, arrays: images (N, C, H, W) uint8 and labels (N,) int64. Text sources give
rows {id, label, query, document}. Row ids are the data's `id` column, else the row positions in the split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrl import storage
from mrl.configio import ConfigError
from mrl.data.formats import DataError, load_fashion_mnist
from mrl.data.readers import SplitReader, convert_fashion_mnist, open_folder, open_parquet, read_text_rows
from mrl.data.wordnet import read_text_split, write_wordnet_parquet
from mrl.registry import Registry

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True, kw_only=True)
class DataSource:
    """One kind of data. `data` below is a `DataConfig`; `split` is "train" or "test" (the stages' names).

    Attributes:
        modality: "image" or "text": which encoders it feeds.
        default_root: the root when `data.path` is not given; None: `data.path` is required.
        check_paths: raise ConfigError when what `data` names is not there (called when a job starts).
        prepare: the `data` workers get (absolute paths, conversions done), on the driver before any Ray work.
        open: image sources: the split's reader, from metadata (data, split, (C, H, W)) -> SplitReader.
        read_text: text sources: the split's rows (data, split) -> {id, label, query, document}.
        load: image sources that read faster in memory than through `open`: (data, split) -> (images, labels).
        location: where a split's files are, a directory or one file (data, split) -> a local path or URI (what
            the train stage digests and `mrl lineage` re-checks); None: <data.path>/<split on disk>.
    """

    modality: str
    default_root: str | None = None
    check_paths: Callable[[Any, str], None]
    prepare: Callable[[Any, str | Path], Any]
    open: Callable[[Any, str, tuple[int, int, int]], SplitReader] | None = None
    read_text: Callable[[Any, str], dict[str, Any]] | None = None
    load: Callable[[Any, str], tuple[np.ndarray, np.ndarray]] | None = None
    location: Callable[[Any, str], str] | None = None


DATA_SOURCES: Registry[DataSource] = Registry("data source")


def on_disk(data, split: str) -> str:
    """The directory name of `split` under the data's root: train, or `data.test_split` for test."""
    return "train" if split == "train" else data.test_split


def _limit(data, split: str) -> int | None:
    return data.train_limit if split == "train" else data.test_limit


def _root_exists(data, prefix: str) -> None:
    problem = storage.uri_problem(data.root)
    if problem:
        raise ConfigError(f"{prefix}path {str(data.root)!r} {problem}")
    if not storage.exists(data.root):
        raise ConfigError(f"{prefix}path {str(data.root)!r} does not exist ({data.source} data); give an existing "
                          "directory")


def _absolute(data, output_dir: str | Path):
    return dataclasses.replace(data, path=storage.absolute(data.root))


# ------------------------------------------------------------------------------------------------ image sources

def _fashion_mnist_paths(data, prefix: str) -> None:
    if storage.is_remote(data.root):
        raise ConfigError(f"{prefix}path {data.root!r}: fashion_mnist reads its IDX files from a local directory; "
                          "put the converted shards in a bucket with data.shards_path, or Parquet shards with "
                          "data.source=parquet")
    if not Path(data.root).exists():
        raise ConfigError(f"{prefix}path {str(data.root)!r} does not exist ({data.source} data); install it with "
                          "`apt-get install -y dataset-fashion-mnist`, or give a directory holding the four IDX files")


def _fashion_mnist_prepare(data, output_dir: str | Path):
    """The IDX files converted once into Parquet shards (at `data.shards_path`, default
    <output_dir>/data/fashion-mnist; a local path or a URI) that workers stream."""
    shards = storage.absolute(data.shards_path or storage.join(output_dir, "data", "fashion-mnist"))
    convert_fashion_mnist(data.root, shards)
    return dataclasses.replace(data, path=str(Path(data.root).resolve()), shards_path=shards)


def _fashion_mnist_open(data, split: str, shape: tuple[int, int, int]) -> SplitReader:
    if data.shards_path is None:
        raise DataError("fashion_mnist data has no shards_path: prepare_data() converts the IDX files into "
                        "Parquet shards and sets it")
    return open_parquet(data.shards_path, split, split, shape, _limit(data, split))


def _fashion_mnist_location(data, split: str) -> str:
    """The Parquet shards workers read (the IDX files are converted once; a changed IDX file is not reread)."""
    if data.shards_path is None:
        raise DataError("fashion_mnist data has no shards_path: prepare_data() sets it")
    return storage.join(data.shards_path, split)


def _parquet_location(data, split: str) -> str:
    """<root>/<split>/ or the single file <root>/<split>.parquet (the layouts `parquet_shards` reads)."""
    directory = storage.join(data.root, on_disk(data, split))
    return directory if storage.is_dir(directory) else f"{directory}.parquet"


DATA_SOURCES.register("fashion_mnist")(DataSource(
    modality="image", default_root=FASHION_MNIST_DIR, check_paths=_fashion_mnist_paths,
    prepare=_fashion_mnist_prepare, open=_fashion_mnist_open, location=_fashion_mnist_location,
    load=lambda data, split: load_fashion_mnist(data.root, split)))
DATA_SOURCES.register("image_folder")(DataSource(
    modality="image", check_paths=_root_exists, prepare=_absolute,
    open=lambda data, split, shape: open_folder(storage.join(data.root, on_disk(data, split)), split, shape,
                                                _limit(data, split))))
DATA_SOURCES.register("parquet")(DataSource(
    modality="image", check_paths=_root_exists, prepare=_absolute, location=_parquet_location,
    open=lambda data, split, shape: open_parquet(data.root, on_disk(data, split), split, shape,
                                                 _limit(data, split))))


# ------------------------------------------------------------------------------------------------- text sources

def _wordnet_paths(data, prefix: str) -> None:
    if storage.is_remote(data.root):
        raise ConfigError(f"{prefix}path {data.root!r}: wordnet data is converted on this machine into a local "
                          "directory; give a local path (text_parquet reads text shards from object storage)")
    if not (Path(data.wordnet_root) / "data.noun").is_file():
        raise ConfigError(f"{prefix}wordnet_root {data.wordnet_root!r} holds no WordNet database (data.noun); "
                          "install it with `apt-get install -y wordnet-base`")


def _wordnet_prepare(data, output_dir: str | Path):
    """WordNet converted into text shards at `data.path` on first use (a cache hit afterwards)."""
    path = str(Path(data.root).resolve())
    write_wordnet_parquet(path, data.wordnet_root, seed=data.seed, test_fraction=data.test_fraction)
    return dataclasses.replace(data, path=path)


DATA_SOURCES.register("wordnet")(DataSource(
    modality="text", check_paths=_wordnet_paths, prepare=_wordnet_prepare,
    read_text=lambda data, split: read_text_split(data.root, on_disk(data, split))))
DATA_SOURCES.register("text_parquet")(DataSource(
    modality="text", check_paths=_root_exists, prepare=_absolute,
    read_text=lambda data, split: read_text_rows(
        storage.join(data.root, on_disk(data, split)), "text_parquet split",
        "give data.path a directory holding <split>/*.parquet for train and data.test_split")))


# ------------------------------------------------------------------------------------------ what stages call

def source_of(data) -> DataSource:
    """The registry entry of `data.source`."""
    return DATA_SOURCES.get(data.source)


def check_data_paths(data, prefix: str = "") -> None:
    """Check the paths `data` names (at the start of the job that reads them); ConfigError names the field."""
    source_of(data).check_paths(data, prefix)


def prepare_data(data, output_dir: str | Path):
    """A `DataConfig` ready for workers that may run on other nodes, prepared on the driver before any Ray work:
    absolute paths, and whatever conversion the source needs (Fashion-MNIST's IDX files into Parquet shards,
    WordNet into text shards), done once."""
    return source_of(data).prepare(data, output_dir)


def split_location(data, split: str) -> str:
    """Where the files of `split` ("train" or "test") of a prepared `DataConfig` are: a directory (every file
    under it) or one file. The train stage records their content digest; `mrl lineage` re-checks it."""
    source = source_of(data)
    if source.location is not None:
        return source.location(data, split)
    return storage.join(data.root, on_disk(data, split))


def open_split(data, shape: tuple[int, int, int], split: str) -> SplitReader:
    """The reader of `split` ("train" or "test") of an image `DataConfig`, from metadata only.

    Args:
        data: the data config; a fashion_mnist one needs `shards_path` (set by `prepare_data`).
        shape: (C, H, W) the model takes.
        split: "train" or "test" (read from `data.test_split` on disk).

    Raises:
        DataError: naming the path and the layout expected there, or a text source.
    """
    source = source_of(data)
    if source.open is None:
        raise DataError(f"data.source {data.source!r} is {source.modality} data, not an image source")
    return source.open(data, split, shape)


def load_split(data, model, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load `split` ("train"/"test") of image data in memory, as configured by a `DataConfig` and a
    `ModelConfig`, with limits applied (in-process training and evaluation; stages stream instead).

    Returns:
        images (N, C, H, W) uint8 and labels (N,) int64.
    """
    shape = (model.in_channels, model.image_size, model.image_size)
    source = source_of(data)
    if source.load is not None:
        images, labels = source.load(data, split)
        limit = _limit(data, split)
        images, labels = (images, labels) if limit is None else (images[:limit], labels[:limit])
    else:
        reader = open_split(data, shape, split)
        table = reader.read(0, reader.n)
        pixels = table.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        images, labels = pixels.reshape((-1, *shape)), table.column("label").to_numpy().astype(np.int64)
    if images.shape[1:] != shape:
        raise DataError(f"{data.source} images have shape {images.shape[1:]}, but the model expects {shape}; set "
                        "model.in_channels and model.image_size")
    return images, labels


def load_text_split(data, split: str) -> dict:
    """Text rows of `split` ("train"/"test") as configured by a text `DataConfig`, with limits applied.

    A limit keeps a seeded random subset (`data.seed`), not the first rows: WordNet's ids are sorted by part of
    speech, so the first rows would all be adjectives.

    Returns:
        {"id": int64 (N,), "label": int64 (N,), "query": [str] * N, "document": [str] * N}, sorted by id.
    """
    source = source_of(data)
    if source.read_text is None:
        raise DataError(f"data.source {data.source!r} is {source.modality} data, not a text source")
    data = prepare_data(data, "")
    rows = source.read_text(data, split)
    limit = _limit(data, split)
    if limit is None or limit >= len(rows["id"]):
        return rows
    keep = np.sort(np.random.default_rng(data.seed).choice(len(rows["id"]), size=limit, replace=False))
    return {key: value[keep] if isinstance(value, np.ndarray) else [value[i] for i in keep]
            for key, value in rows.items()}
