"""Pure helpers of benchmarks/serve_load.py (no Ray, no HTTP): percentiles, the longest gap between successful
answers, failure accounting around a replica kill, client spreading and PNG query bodies."""

import base64
import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("serve_load_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_percentiles(bench):
    p = bench.percentiles(np.arange(1, 101, dtype=float))
    assert set(p) == {"p50_ms", "p90_ms", "p99_ms"}
    assert p["p50_ms"] == pytest.approx(50.5)
    assert p["p99_ms"] == pytest.approx(99.01)
    assert bench.percentiles([3.0, 1.0, 2.0], (50,)) == {"p50_ms": 2.0}  # order does not matter


def test_percentiles_empty_is_nan(bench):
    p = bench.percentiles([])
    assert all(math.isnan(v) for v in p.values())


def test_longest_gap_across_clients(bench):
    # two clients' completions interleaved and unsorted; failures do not close a gap
    done_ok = [(1.0, 1), (1.1, 1), (5.0, 1), (1.2, 1), (1.5, 0), (2.0, 0), (1.3, 1), (5.1, 1)]
    gap, t_from, t_to = bench.longest_gap(done_ok)
    assert gap == pytest.approx(3.7)
    assert (t_from, t_to) == (1.3, 5.0)


def test_longest_gap_needs_two_successes(bench):
    assert bench.longest_gap([])[0] == 0.0
    gap, t_from, _ = bench.longest_gap([(1.0, 1), (2.0, 0)])
    assert gap == 0.0 and math.isnan(t_from)


def test_count_failures_around_kill(bench):
    t_kill = 10.0
    records = [
        (8.0, 9.0, 1),    # done before the kill
        (9.0, 9.5, 0),    # failed before the kill
        (9.8, 10.2, 0),   # in flight, failed
        (9.9, 10.1, 1),   # in flight, answered (the other replica)
        (9.95, 10.3, 0),  # in flight, failed
        (10.1, 10.4, 0),  # sent after the kill to the dead replica
        (10.5, 10.6, 1),
    ]
    f = bench.count_failures(records, t_kill)
    assert f == {"requests": 7, "failed": 4, "in_flight_at_kill": 3, "failed_in_flight": 2, "failed_after_kill": 1,
                 "failed_before_kill": 1}


def test_count_failures_empty(bench):
    assert bench.count_failures([], 1.0)["requests"] == 0


def test_latency_around_kill(bench):
    records = [(0.0, 0.010, 1), (1.0, 1.020, 1), (1.5, 2.5, 1),  # the last one spans the kill: in neither
               (3.0, 3.100, 1), (3.0, 3.300, 0)]
    lat = bench.latency_around(records, 2.0)
    assert lat["before_p50_ms"] == pytest.approx(15.0)
    assert lat["after_p50_ms"] == pytest.approx(100.0)
    assert set(lat) == {"before_p50_ms", "before_p99_ms", "after_p50_ms", "after_p99_ms"}


def test_timeline_bins_relative_to_kill(bench):
    records = [(0, 9.5, 1), (0, 9.7, 1), (0, 10.2, 0), (0, 11.9, 1)]
    tl = bench.timeline(records, 10.0, 1.0)
    assert tl == [{"t_s": -1.0, "ok": 2, "failed": 0}, {"t_s": 0.0, "ok": 0, "failed": 1},
                  {"t_s": 1.0, "ok": 1, "failed": 0}]
    assert bench.timeline([], 0.0) == []


def test_kill_verdict(bench):
    fails = {"failed": 3, "in_flight_at_kill": 8}
    assert bench.kill_verdict(fails, 0.4, 8) == {"failures_ok": True, "gap_ok": True}
    assert bench.kill_verdict({"failed": 9, "in_flight_at_kill": 8}, 1.5, 8) == {"failures_ok": False,
                                                                                 "gap_ok": False}
    # more failures than were in flight: requests routed to the dead replica after the kill count against it
    assert not bench.kill_verdict({"failed": 5, "in_flight_at_kill": 4}, 0.1, 8)["failures_ok"]


def test_split_clients(bench):
    assert bench.split_clients(1) == [1]
    assert bench.split_clients(8) == [2, 2, 2, 2]
    assert bench.split_clients(10) == [3, 3, 2, 2]
    assert sum(bench.split_clients(32)) == 32 and len(bench.split_clients(32)) == 4


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 16, 16)])
def test_png_base64_roundtrip(bench, shape):
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = base64.b64decode(bench.png_base64(img), validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = np.asarray(Image.open(io.BytesIO(data)))
    back = back[None] if back.ndim == 2 else back.transpose(2, 0, 1)
    np.testing.assert_array_equal(back, img)


def test_batch_bodies_carry_the_same_vectors_as_json_or_one_binary_matrix(bench):
    import json

    from mrl.service.api import BatchSearchRequest

    vectors = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    as_json = [json.loads(b) for b in bench.batch_bodies(vectors, 4, "json")]
    binary = [json.loads(b) for b in bench.batch_bodies(vectors, 4, "binary")]
    assert len(as_json) == len(binary) == 2  # whole batches only
    for j, b in zip(as_json, binary):
        BatchSearchRequest.model_validate(j)
        BatchSearchRequest.model_validate(b)
        rows = np.frombuffer(base64.b64decode(b["vectors"]["data"]), "<f4").reshape(b["vectors"]["shape"])
        assert np.allclose(rows, [q["vector"] for q in j["queries"]], atol=1e-6) and j["k"] == b["k"] == 10
    assert np.array_equal(np.frombuffer(base64.b64decode(binary[1]["vectors"]["data"]), "<f4").reshape(4, 6),
                          vectors[4:8])


def test_rate_counts_items_per_second(bench):
    calls = []
    per_second = bench.rate(calls.append, ["a", "b"], 64, 0.05)
    # one warm-up call, then the items in turn; the rate is timed calls * items per call over at least 0.05 s
    assert calls[:3] == ["a", "a", "b"] and 0 < per_second <= (len(calls) - 1) * 64 / 0.05
