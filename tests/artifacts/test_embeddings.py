"""The embeddings artifact reader (mrl.artifacts.embeddings): Parquet shards of float16 or float32 vectors, read
only as the run's manifest lists them, each file verified against its sha256."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrl.artifacts.embeddings import embedding_files, read_embedding_files, read_embeddings
from mrl.artifacts.manifest import ManifestError, write_manifest


def shards(split_dir, vectors, dtype=pa.float32(), parts=3, seed=0):
    """`vectors` written as `parts` shuffled Parquet shards (id, label = id % 3, embedding)."""
    split_dir.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(vectors))
    for shard, rows in enumerate(np.array_split(order, parts)):
        flat = pa.array(vectors[rows].ravel().astype(dtype.to_pandas_dtype()), dtype)
        table = pa.table({"id": pa.array(rows, pa.int64()), "label": pa.array(rows % 3, pa.int64()),
                          "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])})
        pq.write_table(table, split_dir / f"part-{shard:05d}.parquet")


def embed_run(path, vectors, dtype=pa.float32()):
    """An embed run directory: a train split and the manifest listing its files."""
    shards(path / "train", vectors, dtype)
    write_manifest(path, {"stage": "embed", "embed_run_id": "r", "dim": vectors.shape[1], "sizes": [4, 8],
                          "rows": {"train": len(vectors)}, "files": embedding_files(path, ["train"])})
    return path / "train"


@pytest.mark.parametrize("dtype", [pa.float16(), pa.float32()])
def test_parquet_shards_of_either_dtype_read_back_sorted_by_id(tmp_path, dtype):
    vectors = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    ids, labels, got = read_embeddings(embed_run(tmp_path / "run", vectors, dtype))
    assert ids.tolist() == list(range(30)) and labels.tolist() == [i % 3 for i in range(30)]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, vectors, rtol=1e-3 if dtype == pa.float16() else 0, atol=1e-3 if dtype == pa.float16() else 0)


def test_missing_embeddings_say_which_stage_writes_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the embed stage first"):
        read_embeddings(tmp_path / "nope")
    shards(tmp_path / "loose" / "train", np.ones((6, 4), np.float32))  # Parquet files no manifest vouches for
    with pytest.raises(FileNotFoundError, match="is not a directory written by the platform"):
        read_embeddings(tmp_path / "loose" / "train")
    ids, _, _ = read_embedding_files(sorted((tmp_path / "loose" / "train").glob("*.parquet")))  # read as such
    assert ids.tolist() == list(range(6))


def test_only_listed_files_are_read_and_each_is_verified(tmp_path):
    vectors = np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32)
    split = embed_run(tmp_path / "run", vectors)
    shards(tmp_path / "stray", np.zeros((5, 8), np.float32), parts=1)  # a file dropped in later: not vouched for
    (tmp_path / "stray" / "part-00000.parquet").rename(split / "part-00009.parquet")
    assert read_embeddings(split)[0].tolist() == list(range(30))
    (split / "part-00002.parquet").unlink()
    with pytest.raises(ManifestError, match="part-00002.parquet listed in the manifest is missing"):
        read_embeddings(split)
    other = embed_run(tmp_path / "other", vectors)
    shards(other, vectors[::-1].copy(), seed=5)  # the listed files rewritten with other rows
    with pytest.raises(ManifestError, match="part-00000.parquet does not match its manifest checksum"):
        read_embeddings(other)


@pytest.mark.parametrize("name", ["../x.parquet", "/etc/hostname", "sub/part.parquet", ".."])
def test_a_manifest_naming_a_path_outside_its_split_is_refused(tmp_path, name):
    vectors = np.ones((6, 4), np.float32)
    split = embed_run(tmp_path / "run", vectors)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    manifest["files"]["train"][name] = "0" * 64
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=f"lists the file {name!r}.*plain file names"):
        read_embeddings(split, verify=False)


def test_format_1_embeddings_are_refused_by_the_parquet_reader_saying_to_rerun_the_embed_stage(tmp_path):
    """Format 1 manifests list no files, so nothing vouches for the Parquet files: readers of them refuse (the
    item reader and lineage, which need only the manifest, take format 1)."""
    split = embed_run(tmp_path / "run", np.ones((6, 4), np.float32))
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    manifest.pop("files")
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(ManifestError, match="format version 1 embed artifact; this platform reads version 2: "
                                            "rerun the embed stage"):
        read_embeddings(split)
