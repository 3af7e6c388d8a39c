"""The index artifact: float16 / float32 rerank vectors, manifest checks, and Parquet embeddings of both
dtypes."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrl.embed import read_embeddings
from mrl.index import IndexMismatchError, load_index, sha256, write_index
from mrl.search import adaptive_search, exact_search


def corpus(n=500, d=32, seed=0):
    rng = np.random.default_rng(seed)
    return np.arange(n) * 10, rng.integers(0, 5, n), rng.normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_written_index_loads_and_searches_like_numpy(tmp_path, dtype):
    ids, labels, vectors = corpus()
    manifest = write_index(tmp_path, ids, labels, vectors, [8, 32], "flat", {"model_uri": "models:/m/1"},
                           vector_dtype=dtype)
    assert manifest["dtype"] == dtype and manifest["rows"] == 500 and set(manifest["checksums"]) >= {"vectors.npy"}
    art = load_index(tmp_path, expect_dim=32, expect_model_uri="models:/m/1")
    assert art.vectors.dtype == np.dtype(dtype) and sorted(art.indexes) == [8, 32]
    q = np.random.default_rng(1).normal(size=(20, 32)).astype(np.float32)
    _, pos = adaptive_search(art.indexes[8], art.vectors, q, 8, 500, 32, 10)
    _, exact = exact_search(vectors.astype(dtype).astype(np.float32), q, 10)
    assert pos.tolist() == exact.tolist()  # a shortlist of everything reranked exactly = exact search


def test_float16_halves_the_vector_file(tmp_path):
    ids, labels, vectors = corpus(n=2000, d=64)
    write_index(tmp_path / "a", ids, labels, vectors, [8], "flat", {}, vector_dtype="float32")
    write_index(tmp_path / "b", ids, labels, vectors, [8], "flat", {}, vector_dtype="float16")
    a, b = (tmp_path / "a" / "vectors.npy").stat().st_size, (tmp_path / "b" / "vectors.npy").stat().st_size
    assert b < 0.51 * a


def test_manifest_dtype_and_size_mismatches_are_refused(tmp_path):
    ids, labels, vectors = corpus()
    write_index(tmp_path, ids, labels, vectors, [8], "flat", {}, vector_dtype="float16")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["dtype"] = "float32"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError, match="vectors.npy holds float16, the manifest says float32"):
        load_index(tmp_path)
    with pytest.raises(IndexMismatchError, match="outside \\[1, d=32\\]"):
        write_index(tmp_path / "x", ids, labels, vectors, [8, 64], "flat", {})


def test_sha256_matches_hashlib(tmp_path):
    import hashlib

    (tmp_path / "f").write_bytes(b"mrl" * 1000)
    assert sha256(tmp_path / "f") == hashlib.sha256(b"mrl" * 1000).hexdigest()


@pytest.mark.parametrize("dtype", [pa.float16(), pa.float32()])
def test_parquet_shards_of_either_dtype_read_back_sorted_by_id(tmp_path, dtype):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 8)).astype(np.float32)
    order = rng.permutation(30)
    for shard, rows in enumerate(np.array_split(order, 3)):
        flat = pa.array(vectors[rows].ravel().astype(dtype.to_pandas_dtype()), dtype)
        table = pa.table({"id": pa.array(rows, pa.int64()), "label": pa.array(rows % 3, pa.int64()),
                          "embedding": pa.FixedSizeListArray.from_arrays(flat, 8)})
        pq.write_table(table, tmp_path / f"part-{shard}.parquet")
    ids, labels, got = read_embeddings(tmp_path)
    assert ids.tolist() == list(range(30)) and labels.tolist() == [i % 3 for i in range(30)]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, vectors, rtol=1e-3 if dtype == pa.float16() else 0, atol=1e-3 if dtype == pa.float16() else 0)


def test_index_stores_adanns_cells(tmp_path):
    from mrl.search import rerank

    ids, labels, vectors = corpus(n=400, d=32)
    manifest = write_index(tmp_path, ids, labels, vectors, [8, 16], "flat", {}, vector_dtype="float16",
                           adanns=(8, 10))
    assert manifest["adanns"] == {"size": 8, "nlist": 10} and "adanns.npz" in manifest["checksums"]
    art = load_index(tmp_path)
    assert art.store.vectors.dtype == np.float16 and len(art.store) == 400
    assert art.adanns.cluster_size == 8 and art.adanns.nlist == 10
    assert sorted(art.adanns.members.tolist()) == list(range(400))  # every row in exactly one cell
    q = np.random.default_rng(2).normal(size=(5, 32)).astype(np.float32)
    cand = art.adanns.candidates(q, nprobe=10)  # all cells: every row is a candidate
    _, pos = rerank(cand, art.store, q, 32, 10)
    _, exact = exact_search(vectors.astype(np.float16).astype(np.float32), q, 10)
    assert pos.tolist() == exact.tolist()
    np.savez(tmp_path / "adanns.npz", cluster_size=np.int64(8), centroids=np.zeros((10, 8)),
             offsets=np.zeros(11, dtype=np.int64), members=np.zeros(0, dtype=np.int64))
    with pytest.raises(IndexMismatchError, match="adanns.npz does not match its manifest checksum"):
        load_index(tmp_path)


def test_adanns_cells_outside_d_are_refused(tmp_path):
    ids, labels, vectors = corpus(n=100, d=16)
    with pytest.raises(IndexMismatchError, match="adanns_size 32 is outside"):
        write_index(tmp_path, ids, labels, vectors, [8], "flat", {}, adanns=(32, 4))
    assert not (tmp_path / "size_8.faiss").exists()  # refused before any index was built
