"""The retrieval benchmark on small real files: staged searches against brute force, metrics, result files."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrl.artifacts.embeddings import embedding_files
from mrl.artifacts.manifest import write_manifest
from mrl.configio import ConfigError, from_dict
from mrl.retrieval.topk import exact_search
from mrl.runtime import peak_rss_bytes, reset_peak_rss
from mrlbench.measure import recall_of
from mrlbench.retrieval_bench import RetrievalBenchConfig, run_benchmark
from mrlbench.retrieval_report import render, write_results


def write_split(path, vectors, labels, dtype=pa.float16()):
    path.mkdir(parents=True)
    d = vectors.shape[1]
    for part, rows in enumerate(np.array_split(np.arange(len(vectors)), 2)):
        flat = pa.array(vectors[rows].ravel().astype(dtype.to_pandas_dtype()), dtype)
        pq.write_table(pa.table({"id": pa.array(rows, pa.int64()), "label": pa.array(labels[rows], pa.int64()),
                                 "embedding": pa.FixedSizeListArray.from_arrays(flat, d)}),
                       path / f"part-{part}.parquet")


@pytest.fixture
def embeddings(tmp_path):
    """Clustered vectors whose first 8 dims carry the class, like an MRL embedding; float16 shards."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 64)).astype(np.float32)
    labels = rng.integers(0, 5, 1600)
    x = centres[labels] + 0.6 * rng.normal(size=(1600, 64)).astype(np.float32)
    x[:, :8] *= 3.0
    emb = tmp_path / "emb"
    write_split(emb / "train", x[:1500], labels[:1500])
    write_split(emb / "test", x[1500:], labels[1500:])
    write_manifest(emb, {"stage": "embed", "embed_run_id": "r", "model_uri": "m", "dim": 64, "sizes": [8, 16, 32, 64],
                         "files": embedding_files(emb, ["train", "test"])})
    db = x[:1500].astype(np.float16).astype(np.float32)
    return emb, db, x[1500:], labels


def config(emb, tmp_path, **extra):
    base = {
        "output_dir": str(tmp_path / "out"), "embeddings": str(emb), "k": 5, "threads": 1,
        "vector_dtype": "float16", "results": "results/bench",
        "indexes": {"flat_d": {"kind": "flat"}, "flat_8": {"kind": "flat", "size": 8},
                    "ivf_8": {"kind": "ivf", "size": 8, "nlist": 16},
                    "hnsw_8": {"kind": "hnsw", "size": 8, "hnsw_m": 8},
                    "adanns_8": {"kind": "adanns", "size": 8, "nlist": 16}},
        "searches": [
            {"name": "exact", "index": "flat_d", "shortlist": 5, "repeats": 1, "single": 2},
            {"name": "adaptive all", "index": "flat_8", "shortlist": 1500, "rerank": [[None, 5]], "repeats": 1},
            {"name": "funnel", "index": "ivf_8", "nprobe": 4, "shortlist": 50, "rerank": [[16, 20], [None, 5]],
             "repeats": 1, "single": 0},
            {"name": "hnsw", "index": "hnsw_8", "ef_search": 64, "shortlist": 40, "rerank": [[None, 5]],
             "repeats": 1},
            {"name": "adanns all cells", "index": "adanns_8", "nprobe": 16, "rerank": [[32, 30], [None, 5]],
             "repeats": 1},
        ],
    }
    base.update(extra)
    return from_dict(RetrievalBenchConfig, base)


def test_benchmark_rows_match_brute_force_and_write_results(embeddings, tmp_path):
    emb, db, queries, labels = embeddings
    cfg = config(emb, tmp_path)
    result = run_benchmark(cfg)
    rows = {r["config"]: r for r in result["rows"]}
    assert list(rows) == ["exact", "adaptive all", "funnel", "hnsw", "adanns all cells"]
    # exact search and adaptive search with the whole database shortlisted are exact: all of the true top-5
    assert rows["exact"]["result_recall"] == 1.0 and rows["adaptive all"]["result_recall"] == pytest.approx(1.0)
    assert rows["adaptive all"]["shortlist_recall"] == 1.0
    assert rows["adaptive all"]["map"] == pytest.approx(rows["exact"]["map"])
    # every cell probed: the cells' FAISS lists rank the whole database at 32 dims, keeping the first stage's 30
    assert rows["adanns all cells"]["shortlist"] == 30
    _, top30 = exact_search(db, queries, 30, size=32)
    assert rows["adanns all cells"]["shortlist_recall"] == pytest.approx(recall_of(exact_search(db, queries, 5)[1], top30))
    for r in rows.values():
        assert 0 <= r["map"] <= 1 and 0 <= r["top1"] <= 1 and r["qps"] > 0 and r["madds_per_query"] > 0
        assert r["peak_rss_gib"] > 0
    assert rows["exact"]["madds_per_query"] == 1500 * 64
    assert rows["adaptive all"]["madds_per_query"] == 1500 * 8 + 1500 * 64
    assert rows["funnel"]["madds_per_query"] < rows["exact"]["madds_per_query"]
    assert rows["exact"]["single_ms"] > 0 and rows["funnel"]["single_ms"] is None
    assert [name for name, _ in rows["funnel"]["stage_ms"]] == ["ivf@8", "rerank@16", "rerank@64"]
    assert result["rows_database"] == 1500 and result["dtype"] == "float16" and "CPUs" in result["machine"]

    md = write_results(cfg, result, "python benchmarks/retrieval.py", tmp_path)
    text = md.read_text()
    assert "| adaptive all |" in text and "1.0x" in text and "- funnel: ivf@8 " in text
    assert (tmp_path / "results" / "bench_pareto.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results" / "bench.json").read_text())
    assert saved["rows"][0]["config"] == "exact"
    import mlflow

    runs = mlflow.search_runs(experiment_names=["mrl"], filter_string="tags.`mrl.stage` = 'benchmark'")
    assert len(runs) == 1


def test_staged_searches_run_on_the_engine_and_match_brute_force(embeddings, tmp_path):
    from mrl.retrieval.engine import SearchEngine
    from mrlbench.retrieval_bench import BenchIndex, BenchSearch, build_source, load_data

    emb, db, queries, _ = embeddings
    cfg = config(emb, tmp_path)
    store, _, query_sets, dim, _ = load_data(cfg)
    q = query_sets["eval"][0]  # queries as stored: float16 values
    _, truth = exact_search(db, q, 5)

    def run(spec, search):
        source, _ = build_source(spec, store, dim, seed=0)
        return SearchEngine(store, {"x": source}).run(search.plan(spec.kind == "adanns", dim, 5), q)

    exact = run(BenchIndex(kind="flat"), BenchSearch(name="e", index="x", shortlist=5))
    assert np.array_equal(exact.positions, truth) and exact.madds == 1500 * 64
    everything = BenchSearch(name="a", index="x", shortlist=1500, rerank=((16, 700), (None, 5)))
    found = run(BenchIndex(kind="flat", size=8), everything)
    # a funnel whose 16-d cut keeps 700 of 1500 rows still finds the exact top-5 of these clustered vectors
    assert found.shortlist.shape == (100, 1500) and np.array_equal(found.positions, truth)
    assert found.madds == 1500 * 8 + 1500 * 16 + 700 * 64


def test_families_are_tuned_on_held_out_queries_and_compared_with_the_baseline(embeddings, tmp_path):
    """60 evaluation and 40 tuning queries, disjoint; each family's pick is the fastest setting within the mAP
    gap on the tuning queries (a gap of 100 points admits every setting; a gap of 0 only the exact ones)."""
    emb = embeddings[0]
    searches = [
        {"name": "exact", "index": "flat_d", "shortlist": 5, "repeats": 1, "single": 2},
        {"name": "flat 8 only", "index": "flat_8", "shortlist": 5, "repeats": 2, "single": 0, "family": "cheap"},
        {"name": "adaptive all", "index": "flat_8", "shortlist": 1500, "rerank": [[None, 5]], "repeats": 2,
         "single": 2, "family": "cheap"},
        {"name": "hnsw", "index": "hnsw_8", "ef_search": 64, "shortlist": 40, "rerank": [[None, 5]], "repeats": 2,
         "single": 2, "family": "graph"},
        {"name": "exact again", "index": "flat_d", "shortlist": 5, "repeats": 1, "single": 2, "family": "base"},
    ]
    results = {}
    for gap in (100.0, 0.0):
        cfg = config(emb, tmp_path, queries=60, tune_queries=40, map_gap=gap, baseline="base",
                     searches=searches, results=f"results/tuned_{int(gap)}")
        results[gap] = result = run_benchmark(cfg)
        assert result["queries"] == 60 and result["tune_queries"] == 40
        rows = {r["config"]: r for r in result["rows"]}
        assert all(r["tune"]["queries"] == 40 and r["queries"] == 60 for r in rows.values())
        for family, names in (("cheap", ["flat 8 only", "adaptive all"]), ("graph", ["hnsw"])):
            exact_tune = rows["exact"]["tune"]["map"]
            fit = [n for n in names if rows[n]["tune"]["map"] >= exact_tune - gap / 100 - 1e-12]
            want = max(fit, key=lambda n: rows[n]["tune"]["qps"]) if fit else None
            assert result["picks"][family] == want
        by_family = {c["family"]: c for c in result["comparison"]}
        assert by_family["base"]["pick"] == "exact again" and "vs_baseline_qps" not in by_family["base"]
        cheap = by_family["cheap"]
        if cheap["pick"]:
            r, base = rows[cheap["pick"]], rows["exact again"]
            assert cheap["vs_baseline_qps"] == pytest.approx(r["qps"] / base["qps"])
            assert cheap["map_gap"] == pytest.approx(100 * (r["map"] - rows["exact"]["map"]))
        # memory per vector: the flat index alone, or its index plus the float16 rerank vectors
        assert rows["flat 8 only"]["bytes_per_vector"] == 8 * 4
        assert rows["adaptive all"]["bytes_per_vector"] == 8 * 4 + 64 * 2
        assert rows["exact"]["bytes_per_vector"] == 64 * 4
        md = write_results(cfg, result, "cmd", tmp_path).read_text()
        assert "## Settings chosen on held-out queries" in md and "| base | exact again |" in md
    assert results[100.0]["picks"]["cheap"] == "flat 8 only"  # at 8 dims without a rerank: the fastest
    assert results[0.0]["picks"]["cheap"] in ("adaptive all", None)


def test_prefix_study_bounds_shortlists_by_exact_prefix_search(embeddings, tmp_path):
    from mrl.core.metrics import retrieval_metrics
    from mrlbench.retrieval_bench import load_data, prefix_study

    emb, db, _, _ = embeddings
    cfg = config(emb, tmp_path, queries=60, tune_queries=40)
    result = prefix_study(cfg, (8, 16), (5, 20, 100))
    assert [r["size"] for r in result["rows"]] == [8, 16, 64] and result["queries"] == 40
    _, db_labels, query_sets, _, _ = load_data(cfg)
    q, labels = query_sets["tune"]
    _, truth = exact_search(db, q, 5)
    for r in result["rows"]:
        _, top = exact_search(db, q, 100, size=r["size"])
        assert r["recall"] == pytest.approx({str(s): recall_of(truth, top[:, :s]) for s in (5, 20, 100)})
        want = retrieval_metrics(db_labels[top[:, :5]], labels, db_labels, 5)["map@5"]
        assert r["map"] == pytest.approx(want)
        assert list(r["recall"].values()) == sorted(r["recall"].values())  # deeper shortlists find more
    assert all(v == 1.0 for v in result["rows"][-1]["recall"].values())  # d against itself
    with pytest.raises(ConfigError, match="set tune_queries"):
        prefix_study(config(emb, tmp_path), (8,), (5,))


def test_every_benchmark_search_has_the_service_settings_that_run_its_plan(embeddings, tmp_path):
    """The report's deployment settings, fed to the service's search modes, make the plan the benchmark ran
    (the shortlist source renamed as an index artifact names it)."""
    import dataclasses

    from mrl.config import IndexConfig, ServeConfig
    from mrl.configio import from_dict
    from mrl.retrieval.modes import ADANNS_SOURCE, index_source, make_plan
    from mrlbench.retrieval_bench import deployment

    cfg = config(embeddings[0], tmp_path, searches=[
        {"name": "exact", "index": "flat_d", "shortlist": 5},
        {"name": "adaptive", "index": "flat_8", "shortlist": 300, "rerank": [[None, 5]]},
        {"name": "funnel", "index": "ivf_8", "nprobe": 4, "shortlist": 50, "rerank": [[16, 20], [None, 5]]},
        {"name": "graph", "index": "hnsw_8", "ef_search": 64, "shortlist": 40, "rerank": [[32, 12], [None, 5]]},
        {"name": "cells", "index": "adanns_8", "nprobe": 3, "rerank": [[32, 30], [None, 5]]},
        {"name": "cells one stage", "index": "adanns_8", "nprobe": 3, "rerank": [[None, 5]]},
        {"name": "prefix alone", "index": "flat_8", "shortlist": 5},
    ])
    for search in cfg.searches:
        spec = cfg.indexes[search.index]
        deploy = deployment(search, spec, 64, 5)
        if search.name == "prefix alone":
            assert deploy is None
            continue
        index_cfg = from_dict(IndexConfig, deploy["index"])  # valid pipeline settings
        serve = from_dict(ServeConfig, deploy["serve"])
        got = make_plan(serve.mode, serve.search, 64, 5)
        want = search.plan(spec.kind == "adanns", 64, 5)
        source = ADANNS_SOURCE if spec.kind == "adanns" else index_source(spec.size or 64)
        assert got.shortlist == dataclasses.replace(want.shortlist, source=source)
        assert got.reranks == want.reranks, search.name
        assert index_cfg.adanns_size == (8 if spec.kind == "adanns" else None)


def test_render_reports_speed_up_against_the_first_row():
    row = {"config": "a", "top1": 0.9, "map": 0.8, "precision": 0.8, "shortlist_recall": 1.0, "result_recall": 1.0,
           "qps": 100.0, "queries": 2, "single_ms": 1.0, "madds_per_query": 10, "build_seconds": 1.0, "peak_rss_gib": 1.0}
    result = {"rows": [row, {**row, "config": "b", "qps": 2500.0, "single_ms": None}], "k": 10, "dim": 8,
              "rows_database": 10, "queries": 2, "dtype": "float32", "machine": "m", "seconds": 60,
              "model_uri": "x", "augment": {"rows": 10, "seed": 0}}
    text = render(result, "cmd", "T")
    assert "| b | 90.00 | 80.00 |" in text and "| 25.0x |" in text and "augmentation to 10" in text
    assert "| 20 | 100 | 1.0x |" in text  # 2 queries at 100 q/s: a 20 ms batch


def test_recall_of_ignores_empty_slots():
    assert recall_of(np.array([[1, 2], [3, 4]]), np.array([[2, -1, 9], [4, 3, -1]])) == 0.75


def test_peak_rss_is_read_and_reset():
    import mmap

    assert reset_peak_rss()
    before = peak_rss_bytes()
    block = mmap.mmap(-1, 128 * 2**20)  # fresh anonymous pages: malloc cannot hand back memory already resident
    np.frombuffer(block, dtype=np.uint8)[::4096] = 1  # touch every page
    peak = peak_rss_bytes()
    assert peak >= before + 120 * 2**20
    block.close()
    assert reset_peak_rss() and peak_rss_bytes() < peak  # the mark falls back to what is resident now


@pytest.mark.parametrize("change, message", [
    ({"searches": [{"name": "a", "index": "flat_8"}]}, "must be the reference"),
    ({"searches": [{"name": "a", "index": "missing"}]}, "is not one of"),
    ({"searches": [{"name": "a", "index": "flat_d"}, {"name": "b", "index": "flat_8", "shortlist": 10,
                                                       "rerank": [[16, 5], [None, 8]]}]}, "must not grow"),
    ({"searches": [{"name": "a", "index": "flat_d", "shortlist": 3}]}, "fewer than k=5"),
    ({"searches": [{"name": "a", "index": "flat_d"}, {"name": "a", "index": "flat_d"}]}, "unique"),
    ({"searches": [{"name": "a", "index": "flat_d"}, {"name": "b", "index": "adanns_8"}]}, "needs a rerank"),
    ({"queries": 0}, "queries must be > 0"),
    ({"tune_queries": 10}, "tune_queries needs queries"),
    ({"queries": 10, "tune_queries": 10, "baseline": "nope"}, "baseline 'nope' is not the family"),
    ({"searches": [{"name": "a", "index": "flat_d", "shortlist": 5},
                   {"name": "b", "index": "flat_8", "shortlist": 5, "family": "f"}]}, "set tune_queries"),
    ({"searches": [{"name": "a", "index": "flat_d"}, {"name": "b", "index": "flat_8", "shortlist": 10,
                                                       "rerank": [[None, 10], [16, 5]]}]}, "null"),
    ({"searches": [{"name": "a", "index": "flat_d"}, {"name": "b", "index": "flat_8", "shortlist": 10,
                                                       "rerank": [[32, 10], [16, 5]]}]}, "increase"),
    ({"searches": [{"name": "a", "index": "flat_d"}, {"name": "b", "index": "adanns_8", "rerank": [[16, 3]]}]},
     "fewer than k=5"),
])
def test_bad_configs_are_refused_with_the_field(embeddings, tmp_path, change, message):
    emb = embeddings[0]
    with pytest.raises(ConfigError, match=message):
        config(emb, tmp_path, **change)


@pytest.mark.parametrize("index, message", [
    ({"kind": "flat", "size": 4096}, r"indexes.extra: index size 4096 is outside \[1, d=64\]"),
    ({"kind": "ivfpq", "size": 8, "pq_m": 3, "nlist": 4}, r"indexes.extra: .*pq_m=3 does not divide 8"),
    ({"kind": "adanns", "size": 128}, r"indexes.extra: AdANNS cell size 128 is outside \[1, d=64\]"),
])
def test_indexes_that_cannot_be_built_are_refused_before_any_search(embeddings, tmp_path, index, message):
    from mrlbench.retrieval_bench import load_data

    cfg = config(embeddings[0], tmp_path, indexes={"flat_d": {"kind": "flat"}, "extra": index},
                 searches=[{"name": "a", "index": "flat_d", "shortlist": 5}])
    with pytest.raises(ConfigError, match=message):
        load_data(cfg)


def test_a_memory_family_on_memory_mapped_vectors_is_accounted_and_judged(embeddings, tmp_path):
    """Binary shortlists and code stages over memory-mapped vectors: results equal the chained reference,
    resident bytes count the index and codes only, the float stage's reads are counted, the targets are judged
    against the baseline, the memory plot is written, and the deployment settings make the same plan."""
    from mrl.config import IndexConfig, ServeConfig
    from mrl.configio import from_dict
    from mrl.retrieval.codes import CodeStore
    from mrl.retrieval.modes import make_plan
    from mrl.retrieval.store import rerank
    from mrlbench.retrieval_bench import deployment

    emb, db, _, _ = embeddings
    searches = [
        {"name": "exact", "index": "flat_d", "shortlist": 5, "repeats": 1, "single": 2},
        {"name": "graph d", "index": "hnsw_d", "ef_search": 16, "shortlist": 5, "repeats": 1, "single": 2,
         "family": "base"},
        # keeping every row through the code stages makes the float stage exact: recall 1, which the pick needs
        # (its tuning recall must reach the baseline pick's)
        {"name": "bits", "index": "bin_32", "shortlist": 1500, "rerank": [[64, 1500, "binary"], [32, 1500, "int8"],
                                                                           [None, 5]], "repeats": 1, "single": 2,
         "family": "memory"},
    ]
    indexes = {"flat_d": {"kind": "flat"}, "hnsw_d": {"kind": "hnsw", "hnsw_m": 8},
               "bin_32": {"kind": "binary_flat", "size": 32}}
    cfg = config(emb, tmp_path, queries=60, tune_queries=40, map_gap=100.0, baseline="base", vectors="mmap",
                 indexes=indexes, searches=searches, targets={"family": "memory"})
    result = run_benchmark(cfg)
    assert result["vectors"] == "mmap" and (tmp_path / "out" / "vectors-float16.npy").is_file()
    rows = {r["config"]: r for r in result["rows"]}
    bits = rows["bits"]
    n = len(db)
    assert bits["resident_bytes_per_vector"] == pytest.approx((n * 4 + n * 8 + n * 32 + 32 * 4) / n)
    assert bits["bytes_per_vector"] == pytest.approx(bits["resident_bytes_per_vector"] + 64 * 2)
    assert bits["vector_kib_per_query"] == pytest.approx(1500 * 64 * 2 / 1024)
    assert bits["result_recall"] == 1.0 and bits["tune"]["result_recall"] == 1.0
    assert rows["graph d"]["vector_kib_per_query"] == 0 and rows["graph d"]["resident_bytes_per_vector"] > 64 * 4
    # the chained reference on the evaluation queries
    from mrlbench.retrieval_bench import load_data

    _, _, query_sets, _, _ = load_data(cfg)
    q = query_sets["eval"][0]
    shortlist = np.argsort(-brute_hamming_scores(db, q, 32), axis=1, kind="stable")[:, :1500]
    _, step = CodeStore.build(db, "binary", 64).rerank(shortlist, q, 1500, sort=False)
    _, step = CodeStore.build(db, "int8", 32).rerank(step, q, 1500, sort=False)
    _, want = rerank(step, db.astype(np.float16), q, 64, 5)
    assert recall_of(want, np.asarray(bits_positions(cfg, q))) == 1.0
    targets = result["targets"]
    assert targets["pick"] == "bits" and [t["target"] for t in targets["rows"]][:3] == [
        "resident bytes per vector", "mAP@5 − exact", "recall@5"]
    assert targets["rows"][0]["met"] == (bits["resident_bytes_per_vector"]
                                         <= 0.125 * rows["graph d"]["resident_bytes_per_vector"])
    md = write_results(cfg, result, "cmd", tmp_path).read_text()
    assert "## Targets: memory against base" in md and "resident B / vector" in md
    assert (tmp_path / "results" / "bench_memory.png").stat().st_size > 10_000
    deploy = deployment(cfg.searches[2], cfg.indexes["bin_32"], 64, 5)
    assert deploy["index"] == {"kind": "binary_flat", "sizes": [32], "codes": [[64, "binary"], [32, "int8"]]}
    index_cfg, serve = from_dict(IndexConfig, deploy["index"]), from_dict(ServeConfig, deploy["serve"])
    assert make_plan(serve.mode, serve.search, 64, 5).reranks == cfg.searches[2].plan(False, 64, 5).reranks
    assert index_cfg.codes == ((64, "binary"), (32, "int8"))


def brute_hamming_scores(db, queries, size):
    """Minus the Hamming distance of the prefixes' sign bits (Q, N)."""
    a, b = np.asarray(queries)[:, :size] > 0, np.asarray(db, dtype=np.float16)[:, :size] > 0
    return -(a[:, None, :] != b[None, :, :]).sum(-1)


def bits_positions(cfg, queries):
    """The memory search's results, rerun through a fresh engine over the benchmark's own data."""
    from mrl.retrieval.codes import CodeStore
    from mrl.retrieval.engine import SearchEngine
    from mrlbench.retrieval_bench import build_source, load_data

    store, _, _, dim, _ = load_data(cfg)
    search = cfg.searches[2]
    source, _ = build_source(cfg.indexes["bin_32"], store, dim, cfg.seed)
    plan = search.plan(False, dim, cfg.k)
    codes = [CodeStore.build(store.vectors, *key) for key in plan.code_stages()]
    engine = SearchEngine(store, {"bin_32": source}, codes)
    return engine.run(plan, queries).positions


def test_a_floored_family_picks_the_fastest_setting_reaching_the_baseline_picks_tuning_recall():
    from mrlbench.retrieval_bench import pick_per_family

    def row(name, family, tune_map, qps, recall):
        return {"config": name, "family": family, "tune": {"map": tune_map, "qps": qps, "result_recall": recall}}

    rows = [row("exact", None, 0.90, 10, 1.0), row("base slow", "base", 0.90, 100, 0.97),
            row("base fast", "base", 0.899, 200, 0.93), row("lean fastest", "lean", 0.90, 900, 0.92),
            row("lean fast", "lean", 0.899, 500, 0.95), row("lean off bar", "lean", 0.80, 990, 0.99)]
    assert pick_per_family(rows, 0.2) == {"base": "base fast", "lean": "lean fastest"}
    assert pick_per_family(rows, 0.2, {"lean": "base"}) == {"base": "base fast", "lean": "lean fast"}
    rows[4]["tune"]["result_recall"] = 0.90
    assert pick_per_family(rows, 0.2, {"lean": "base"})["lean"] is None
