"""The embeddings artifact reader (mrl.artifacts.embeddings): Parquet shards of float16 or float32 vectors."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrl.artifacts.embeddings import read_embeddings


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


def test_missing_embeddings_say_which_stage_writes_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the embed stage first"):
        read_embeddings(tmp_path / "nope")
