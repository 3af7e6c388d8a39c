"""The text benchmark (mrlbench.text_bench, mrlbench.text_report): config checks, the BM25 helpers on a corpus whose answers are
known, aggregation and targets on hand-made numbers, and one tiny end-to-end run."""

import copy
import json
import sys

import numpy as np
import pytest

from mrl.configio import ConfigError, from_dict
from mrlbench.comparison import aggregate
from mrlbench.text_bench import TextBenchConfig, TextTargets, bm25_class, bm25_pair, bm25_rankings
from mrlbench.text_report import METRICS, check_targets

TINY_MODEL = {"encoder": "bert", "dim": 32, "head": "none", "nesting": {"schedule": "log", "min_size": 8},
              "text": {"vocab_size": 600, "max_tokens": 32},
              "backbone": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                           "intermediate_size": 64}}


def config(**extra):
    base = {"data": {"source": "wordnet", "path": "/tmp/unused-wordnet"}, "model": TINY_MODEL}
    base.update(extra)
    return from_dict(TextBenchConfig, base)


@pytest.mark.parametrize("extra, field", [
    ({"seeds": []}, "seeds"),
    ({"seeds": [1, 1]}, "seeds"),
    ({"shortlist_size": 32, "shortlist_k": 50}, "shortlist_size"),  # = d: nothing to rerank
    ({"shortlist_size": 8, "shortlist_k": 5}, "shortlist_k"),  # below k = 10
    ({"shortlist_size": 8}, "give both shortlist_size and shortlist_k"),
    ({"tune_fraction": 1.0}, "tune_fraction"),
    ({"k": 0}, "k"),
    ({"threads": 0}, "threads"),
    ({"database_limit": 0}, "database_limit"),
    ({"results_name": "a/b"}, "results_name"),
    ({"targets": {"adaptive_gap": 2}}, "targets.adaptive_gap"),
    ({"targets": {"ff_from": 0}}, "targets.ff_from"),
    ({"model": {**TINY_MODEL, "nesting": {"schedule": "list", "sizes": [32]}}}, "nesting"),
    ({"model": {**TINY_MODEL, "encoder": "cnn"}}, "encoder"),
    ({"train": {"epochs": 0}}, "epochs"),
])
def test_bad_values_are_refused_naming_the_field(extra, field):
    with pytest.raises(ConfigError, match=field):
        config(**extra)


def test_defaults_and_the_shipped_configs_load(repo):
    from mrl.configio import load_config

    cfg = config()
    assert cfg.sizes == [8, 16, 32] and cfg.mlflow.experiment == "text-bench"
    for name in ("text.yaml", "text_quick.yaml"):
        loaded = load_config(TextBenchConfig, repo / "benchmarks" / name)
        assert loaded.model.dim == 128 and loaded.sizes[0] == 8 and loaded.k == 10


# ------------------------------------------------------------------------------------------ BM25

CORPUS = ["the cat sat on the mat", "a dog barked at the postman", "fish swim in the sea",
          "the cat chased a mouse", "a mouse ate the cheese"]


def test_bm25_rankings_put_the_only_matching_document_first_and_pad_the_rest():
    pos = bm25_rankings(CORPUS, ["barked postman", "swim sea", "the of and"], k=3)
    assert pos.shape == (3, 3)
    assert pos[0].tolist() == [1, -1, -1]  # one document shares a term; zero-score rows are not results
    assert pos[1].tolist() == [2, -1, -1]
    assert pos[2].tolist() == [-1, -1, -1]  # stop words only
    assert bm25_rankings(CORPUS[:2], ["dog"], k=5).tolist() == [[1, -1, -1, -1, -1]]  # k above the corpus size


def test_bm25_without_bm25s_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm25s", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(ImportError, match=r'pip install "mrl-platform\[bench\]"'):
        bm25_rankings(CORPUS, ["cat"], k=2)


def test_bm25_pair_retrieval_on_known_pairs():
    queries = ["postman dog", "sea fish", "cat mat", "zebra"]  # the first three find their own row first
    documents = ["dog postman letters", "fish sea water", "cat mat sitting", "lion savanna"]
    r = bm25_pair(queries, documents, k=2)
    assert r["pair_r1"] == pytest.approx(0.75) and r["pair_rk"] == pytest.approx(0.75)
    assert r["pair_mrr"] == pytest.approx(0.75)
    # "cat" ranks row 1 (three cats) above its own row 0: rank 2; "mouse" finds row 1 first
    r = bm25_pair(["cat", "mouse"], ["cat dog", "cat cat cat mouse"], k=2)
    assert r["pair_r1"] == pytest.approx(0.5) and r["pair_rk"] == pytest.approx(1.0)
    assert r["pair_mrr"] == pytest.approx(0.75)


def test_bm25_class_retrieval_on_known_labels():
    db = ["red apple fruit", "green apple fruit", "blue whale ocean", "grey whale ocean"]
    labels = np.array([0, 0, 1, 1])
    # "apple pie" finds both apples and "whale song" both whales (AP 1 each); "red whale" (a whale) finds the red
    # apple first (its rarer term), then a whale: top-1 miss, AP = (0 + 1/2) / 2
    r = bm25_class(db, labels, ["apple pie", "whale song", "red whale"], np.array([0, 1, 1]), k=2)
    assert r["class_top1"] == pytest.approx(2 / 3)
    assert r["class_map"] == pytest.approx((1 + 1 + 0.25) / 3)


# ------------------------------------------------------------------------------------------ aggregation, targets

SIZES = [8, 16, 32, 64]


def synthetic_rows(ff_gap: float = 0.02, trunc_gap: float = 0.10) -> list[dict]:
    """Two seeds; MRL leads FF-m by `ff_gap` and FF-d truncated by `trunc_gap` at every size."""
    rows = []
    for seed, jitter in ((0, -0.005), (1, 0.005)):
        for size in SIZES:
            base = 0.5 + 0.05 * np.log2(size) + jitter
            for method, value in (("mrl", base), ("ff", base - ff_gap), ("ff_trunc", base - trunc_gap),
                                  ("ff_pca", base - 0.05)):
                rows.append({"method": method, "seed": seed, "size": size, **{m: value for m in METRICS}})
        rows.append({"method": "bm25", "seed": seed, "size": "sparse", **{m: 0.3 for m in METRICS}})
    return rows


ADAPTIVE = [{"seed": s, "shortlist_size": 16, "shortlist_k": 200, "rerank_size": 64, "adaptive_rk": a,
             "full_rk": 0.80} for s, a in ((0, 0.798), (1, 0.797))]


def test_aggregate_gives_mean_std_min_max_per_method_and_size():
    summary = aggregate(synthetic_rows(), METRICS, extremes=True)
    assert len(summary) == 4 * len(SIZES) + 1
    mrl8 = next(r for r in summary if r["method"] == "mrl" and r["size"] == 8)
    assert mrl8["seeds"] == 2 and mrl8["pair_rk"] == pytest.approx(0.65)
    assert mrl8["pair_rk_min"] == pytest.approx(0.645) and mrl8["pair_rk_max"] == pytest.approx(0.655)
    assert mrl8["pair_rk_std"] == pytest.approx(np.std([0.645, 0.655], ddof=1))
    bm25 = next(r for r in summary if r["method"] == "bm25")
    assert bm25["size"] == "sparse" and bm25["class_map"] == pytest.approx(0.3) and bm25["class_map_std"] == 0


def test_targets_pass_on_a_clear_win():
    targets = check_targets(aggregate(synthetic_rows(), METRICS, extremes=True), ADAPTIVE, SIZES, TextTargets(), k=10)
    assert [t["passed"] for t in targets] == [True, True, True, True]
    assert "adaptive 79.75% vs full 80.00%" in targets[-1]["detail"]


def test_targets_miss_when_ff_wins_truncation_is_close_or_adaptive_drops():
    rows = synthetic_rows(ff_gap=-0.03, trunc_gap=0.01)  # FF-m 3 points ahead (beyond the 0.7-point spread)
    adaptive = copy.deepcopy(ADAPTIVE)
    adaptive[1]["adaptive_rk"] = 0.78  # mean 0.789: 1.1 points below full
    targets = check_targets(aggregate(rows, METRICS, extremes=True), adaptive, SIZES, TextTargets(), k=10)
    assert [t["passed"] for t in targets] == [False, False, False, False]
    assert "16: -3.00" in targets[0]["detail"]


def test_a_small_ff_lead_within_the_seed_spread_still_passes():
    rows = synthetic_rows(ff_gap=-0.005)  # MRL 0.5 points behind, seed spread hypot(0.0071, 0.0071) = 1 point
    assert all(t["passed"] for t in check_targets(aggregate(rows, METRICS, extremes=True), ADAPTIVE, SIZES, TextTargets(), k=10)[:2])


def with_tuned(rows: list[dict], full: float, small: float) -> list[dict]:
    """`rows` plus MRL-tuned: MRL's values, `full` more at d and `small` more at 16."""
    extra = []
    for r in rows:
        if r["method"] == "mrl":
            shift = full if r["size"] == SIZES[-1] else small if r["size"] == 16 else 0.0
            extra.append({**r, "method": "mrl_tuned", **{m: r[m] + shift for m in METRICS}})
    return rows + extra


def test_tuned_mrl_targets_need_ff_parity_from_16_and_a_point_more_at_d():
    rows = synthetic_rows()
    targets = check_targets(aggregate(with_tuned(rows, 0.012, -0.004), METRICS, extremes=True), ADAPTIVE, SIZES,
                            TextTargets(), k=10)
    tuned = [t for t in targets if "MRL-tuned" in t["target"]]
    assert [t["passed"] for t in tuned] == [True, True]
    assert "+1.20 points at 64, -0.40 at 16" in tuned[1]["detail"]
    for full, small in ((0.005, 0.0), (0.02, -0.01)):  # too little at d; too much lost at 16
        missed = check_targets(aggregate(with_tuned(rows, full, small), METRICS, extremes=True), ADAPTIVE, SIZES,
                               TextTargets(), k=10)
        assert [t["passed"] for t in missed if "MRL-tuned" in t["target"]] == [True, False]
    behind = check_targets(aggregate(with_tuned(synthetic_rows(ff_gap=-0.03), 0.0, 0.0), METRICS, extremes=True),
                           ADAPTIVE, SIZES, TextTargets(), k=10)
    assert not next(t for t in behind if t["target"].startswith("MRL-tuned >= FF-m"))["passed"]
    assert len(check_targets(aggregate(rows, METRICS, extremes=True), ADAPTIVE, SIZES, TextTargets(), k=10)) == 4


def winner_yaml(path, sizes=(8, 16, 32), weights=(0.5, 1.0, 1.5)) -> str:
    import yaml

    from mrl.config import TrainJobConfig
    from mrl.configio import to_dict

    winner = from_dict(TrainJobConfig, {
        "data": {"source": "wordnet", "path": "/tmp/unused-wordnet"},
        "model": {**TINY_MODEL, "nesting": {"schedule": "list", "sizes": list(sizes), "weights": list(weights)}},
        "train": {"temperature": 0.1, "temperature_power": 0.5, "sizes_per_step": 2, "epochs": 9, "lr": 0.5}})
    path.write_text(yaml.safe_dump(to_dict(winner)))
    return str(path)


def test_the_tuned_model_takes_the_winners_loss_and_the_benchmarks_budget(tmp_path):
    from mrlbench.text_bench import bench_jobs

    cfg = config(tuned=winner_yaml(tmp_path / "winner.yaml"), seeds=[3], train={"epochs": 1, "lr": 0.003})
    jobs = bench_jobs(cfg, 3)
    assert list(jobs)[:2] == ["mrl", "mrl_tuned"] and len(jobs) == 5  # MRL, MRL-tuned, FF-8, FF-16, FF-32
    tuned = jobs["mrl_tuned"]
    assert tuned.model.weights == [0.5, 1.0, 1.5] and jobs["mrl"].model.weights == [1.0, 1.0, 1.0]
    assert (tuned.train.temperature, tuned.train.temperature_power, tuned.train.sizes_per_step) == (0.1, 0.5, 2)
    assert jobs["mrl"].train.temperature_power == 0 and jobs["ff_8"].train.temperature_power == 0
    assert (tuned.train.epochs, tuned.train.lr, tuned.train.seed) == (1, 0.003, 3)  # the benchmark's budget
    with pytest.raises(ConfigError, match=r"trains sizes \[8, 32\], this benchmark \[8, 16, 32\]"):
        bench_jobs(config(tuned=winner_yaml(tmp_path / "other.yaml", (8, 32), (1.0, 1.0))), 0)
    with pytest.raises(ConfigError, match="is not a file"):
        bench_jobs(config(tuned=str(tmp_path / "missing.yaml")), 0)


# ------------------------------------------------------------------------------------------ end to end


def test_a_tiny_run_writes_every_method_and_size(tmp_path, monkeypatch):
    from mrlbench.text_bench import run_text_bench

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # restored after the test (the run points it at its own store)

    cfg = from_dict(TextBenchConfig, {
        "output_dir": str(tmp_path / "out"), "results_name": "tiny", "seeds": [0], "database_limit": 600,
        "data": {"source": "wordnet", "path": str(tmp_path / "wordnet"), "train_limit": 600, "test_limit": 300},
        "model": TINY_MODEL, "train": {"epochs": 1, "batch_size": 64, "lr": 3e-3},  # shortlist tuned
        "tuned": winner_yaml(tmp_path / "winner.yaml")})
    result = run_text_bench(cfg, tmp_path, command="pytest tiny")
    for name in ("tiny.md", "tiny.csv", "tiny.json", "tiny_pair_r10.png", "tiny_class_map10.png"):
        assert (tmp_path / name).is_file(), name
    lines = (tmp_path / "tiny.csv").read_text().splitlines()
    assert lines[0] == "method,seed,size," + ",".join(METRICS)
    found = {(line.split(",")[0], line.split(",")[2]) for line in lines[1:]}
    expected = {(m, str(s)) for m in ("mrl", "mrl_tuned", "ff", "ff_trunc", "ff_pca") for s in (8, 16, 32)}
    assert expected | {("bm25", "sparse"), ("mrl_adaptive", "32")} == found
    assert len(lines) == 1 + len(found)  # one row per seed / method / size
    for row in result["rows"]:
        assert all(0 <= row[m] <= 1 for m in METRICS)
    js = json.loads((tmp_path / "tiny.json").read_text())
    assert len(js["targets"]) == 6 and js["meta"]["database_rows"] == 600 and len(js["models"]) == 5
    assert js["meta"]["tuned"] == {"weights": [0.5, 1.0, 1.5], "temperature": 0.1, "temperature_power": 0.5,
                                   "sizes_per_step": 2}
    md = (tmp_path / "tiny.md").read_text()
    assert "## Targets" in md and "pytest tiny" in md and "BM25" in md and "| size | MRL | MRL-tuned | FF-m |" in md
    assert "MRL-tuned: prefix m of an MRL model trained at the same budget" in md
    assert "temperature 0.1 at d with power 0.5 (8: 0.2, 16: 0.141, 32: 0.1)" in md
    assert "chosen per seed on 150 held-out test queries" in md and "the other 150 queries" in md
    import mlflow

    runs = mlflow.search_runs(experiment_names=["text-bench"])
    assert len(runs) == 1 and "metrics.mrl_pair_rk_d32" in runs.columns


def test_the_adaptive_setting_is_tuned_on_held_out_queries_only():
    """tune_adaptive picks the cheapest setting within the gap on the queries it is given; a split keeps tuning and
    measured queries apart."""
    from mrlbench.text_bench import _tune_split, tune_adaptive

    rng = np.random.default_rng(0)
    docs = rng.normal(size=(400, 32)).astype(np.float32)
    queries = docs + 0.3 * rng.normal(size=docs.shape).astype(np.float32)  # query i is near document i
    held, scored = _tune_split(400, 0.5, seed=0)
    assert len(held) == 200 and not set(held) & set(scored) and sorted([*held, *scored]) == list(range(400))
    loose = tune_adaptive(queries[held], docs, held, [4, 8, 32], k=10, gap=0.5)
    tight = tune_adaptive(queries[held], docs, held, [4, 8, 32], k=10, gap=0.0)
    assert loose["met"] and tight["met"] and loose["tune_rk"] >= loose["tune_full_rk"] - 0.5
    assert tight["tune_rk"] >= tight["tune_full_rk"]
    cost = {(s, k): s * k for s, k in [(loose["shortlist_size"], loose["shortlist_k"]),
                                        (tight["shortlist_size"], tight["shortlist_k"])]}
    assert cost[(loose["shortlist_size"], loose["shortlist_k"])] <= cost[(tight["shortlist_size"], tight["shortlist_k"])]
