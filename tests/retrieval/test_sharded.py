"""Sharded search with an exact merge (mrl.retrieval.sharded)."""

import numpy as np

from mrl.retrieval.indexes import build_prefix_index
from mrl.retrieval.sharded import sharded_search

from retrieval_reference import brute, data


def test_sharded_search_equals_one_exact_index_including_duplicate_ties():
    db, q = data(1, n=900)
    db[600:650] = db[0:50]  # exact duplicates in another shard: ties must come out by lower id
    q[:5] = db[:5]
    shards = [(build_prefix_index(db[i:i + 300], 32), np.arange(i, i + 300)) for i in range(0, 900, 300)]
    _, ids = sharded_search(shards, q, 32, 10)
    assert ids.tolist() == brute(db, q, 32, 10).tolist()
    assert ids[0, 0] == 0 and ids[0, 1] == 600  # the query itself and its duplicate
