"""The capacity plan of a sharded index (mrlbench.capacity) on round numbers."""

import pytest

from mrlbench.capacity import capacity_plan

GIB = 2**30


def test_nodes_hold_every_replica_within_the_usable_memory():
    # 1,000 rows of 1 GiB resident each, 2 replicas, nodes of 100 GiB at 70%: 2,000 GiB / 70 GiB -> 29 nodes
    plan = capacity_plan(1000, GIB, 0, 100 * GIB, replicas=2, usable=0.7)
    assert plan["nodes"] == 29 and plan["shards"] == 29 and plan["shards_per_node"] == 2
    assert plan["rows_per_shard"] == 35 and plan["resident_gib_per_node"] == 70 <= 70
    assert capacity_plan(1000, GIB, 0, 100 * GIB, replicas=1, usable=0.7)["nodes"] == 15


def test_a_replica_process_cost_adds_nodes_and_availability_follows_replicas():
    lean = capacity_plan(1000, GIB, 0, 100 * GIB, replicas=2, usable=0.7)
    heavy = capacity_plan(1000, GIB, 0, 100 * GIB, replicas=2, usable=0.7, process_bytes=5 * GIB)
    assert heavy["nodes"] > lean["nodes"] and heavy["resident_gib_per_node"] <= 70
    one, two = (capacity_plan(10, 1, 0, 100, replicas=r, usable=1.0, node_availability=0.99) for r in (1, 2))
    assert one["nodes"] == 1 and two["nodes"] == 2  # replicas on distinct nodes
    assert one["shard_availability"] == pytest.approx(0.99) and two["shard_availability"] == pytest.approx(0.9999)
    with pytest.raises(ValueError, match="usable"):
        capacity_plan(10, 1, 0, 100, replicas=1, usable=0)
