"""Capacity plans for a sharded index from measured bytes per row: how many nodes and shards a corpus needs
for a node size and a replica count, and the availability that buys.

The model: R replicas of every shard, at most one per node (`serve.shard_max_replicas_per_node: 1`), so a node
loss takes at most one replica of a shard. Every replica keeps its shard's resident structures (indexes, codes:
`resident_bytes_per_row`) in memory, within a fraction `usable` of the node's memory (the rest: the OS, Ray, the
page cache the memory-mapped full vectors are read through); the full vectors are a file on the node's disk
(`file_bytes_per_row`). Nodes fail independently with availability `a` (the share of time a node is up): a shard
answers while one of its R replicas' nodes is up (1 - (1 - a)^R), a `fail`-mode reply needs every shard.
"""

from __future__ import annotations

import math


def capacity_plan(rows: int, resident_bytes_per_row: float, file_bytes_per_row: float, node_memory_bytes: float,
                  replicas: int, usable: float = 0.7, process_bytes: float = 0.0,
                  node_availability: float = 0.999) -> dict[str, float]:
    """Nodes and shards for `rows` rows with `replicas` replicas of each shard.

    Args:
        resident_bytes_per_row: what a replica keeps in memory per row of its shard.
        file_bytes_per_row: the full vectors on disk per row (float16 at d = 2048: 4,096 B).
        node_memory_bytes: a node's memory.
        usable: the share of a node's memory shard replicas may hold.
        process_bytes: a shard replica's fixed memory (Python, Ray, FAISS), measured.
        node_availability: the share of time a node is up (independent failures).

    Returns:
        {"nodes", "shards", "shards_per_node", "rows_per_shard", "resident_gib_per_node", "disk_tib_per_node",
         "shard_availability", "full_answer_availability"}.
    """
    if not 0 < usable <= 1 or replicas < 1 or rows < 1:
        raise ValueError(f"need 0 < usable <= 1, replicas >= 1, rows >= 1; got {usable}, {replicas}, {rows}")
    budget = node_memory_bytes * usable
    copies = rows * resident_bytes_per_row * replicas  # every replica's structures, over the cluster
    nodes = max(replicas, math.ceil(copies / budget))
    shards = nodes  # one shard per node's worth of memory: each node then holds `replicas` shard replicas
    while True:  # the fixed cost of each replica process must fit too
        per_node = replicas * (math.ceil(rows / shards) * resident_bytes_per_row + process_bytes)
        if per_node <= budget:
            break
        nodes, shards = nodes + 1, shards + 1
    rows_per_shard = math.ceil(rows / shards)
    shard_up = 1 - (1 - node_availability) ** replicas
    return {"nodes": nodes, "shards": shards, "shards_per_node": replicas, "rows_per_shard": rows_per_shard,
            "resident_gib_per_node": per_node / 2**30,
            "disk_tib_per_node": replicas * rows_per_shard * file_bytes_per_row / 2**40,
            "shard_availability": shard_up, "full_answer_availability": shard_up ** shards}
