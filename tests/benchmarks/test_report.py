"""Target checks and result tables of the reproduction benchmark (mrlbench.report), on hand-made summaries."""

import copy
import json

import pytest

from mrlbench.report import LABELS, check_targets, write_tables
from mrlbench.reproduce import ReproduceTargets

TARGETS = ReproduceTargets()  # the thresholds benchmarks/reproduce.yaml sets

SIZES = [8, 16, 32, 64, 128]  # d = 128, d / 8 = 16; <= 64: 8..64; >= 16: 16..128; <= 16: 8, 16
METHODS = ["mrl", "mrl_e", "ff", "ff_first_m", "ff_pca", "ff_random_proj"]
BASE = {  # (top1, nn1, map) at every size
    "mrl": (0.80, 0.70, 0.50),
    "mrl_e": (0.795, 0.70, 0.50),  # -0.5 points vs MRL: within 1 point
    "ff": (0.78, 0.68, 0.48),  # MRL leads by 2 points
    "ff_first_m": (0.60, 0.60, 0.40),
    "ff_pca": (0.60, 0.60, 0.40),
    "ff_random_proj": (0.60, 0.60, 0.40),
}
STD = 0.005


def make_summary(seeds: int = 2) -> list[dict]:
    rows = []
    for method in METHODS:
        top1, nn1, map_ = BASE[method]
        for size in SIZES:
            if method == "ff" and size == 128:
                top1 = 0.80  # FF-d equal to MRL at full size
            rows.append({"method": method, "size": size, "seeds": seeds, "top1": top1, "top1_std": STD,
                         "nn1": nn1, "nn1_std": STD, "map": map_, "map_std": STD})
    return rows


def make_curves() -> list[dict]:
    # strict points (max_drop 0): mean accuracy .799 >= .80 - .003, mean expected size 12 <= 16
    return [{"max_drop": 0.0, "accuracy": 0.800, "expected_size": 10.0, "seed": 0},
            {"max_drop": 0.0, "accuracy": 0.798, "expected_size": 14.0, "seed": 1},
            # loose points must be ignored by the target
            {"max_drop": 0.05, "accuracy": 0.50, "expected_size": 200.0, "seed": 0},
            {"max_drop": 0.05, "accuracy": 0.52, "expected_size": 300.0, "seed": 1}]


def set_value(summary, method, size, metric, value):
    for r in summary:
        if r["method"] == method and r["size"] == size:
            r[metric] = value
            return summary
    raise KeyError((method, size))


# --- check_targets ---------------------------------------------------------------------------------------------


def test_all_targets_pass():
    targets = check_targets(make_summary(), make_curves(), SIZES, TARGETS)
    assert len(targets) == 6
    assert all(set(t) == {"target", "passed", "detail"} for t in targets)
    assert [t["passed"] for t in targets] == [True] * 6, targets
    top1, nn1, full, mrl_e, reductions, adaptive = targets
    assert "linear top-1" in top1["target"] and "1-NN" in nn1["target"]
    assert top1["detail"] == "MRL - FF-m in points by size: 8: +2.00, 16: +2.00, 32: +2.00, 64: +2.00"
    assert nn1["detail"] == "MRL - FF-m in points by size: 8: +2.00, 16: +2.00, 32: +2.00, 64: +2.00"
    assert "d=128" in full["target"]
    assert full["detail"] == "MRL - FF-d = +0.00 points"
    assert mrl_e["detail"] == "16: -0.50, 32: -0.50, 64: -0.50, 128: -0.50"
    assert "[8, 16]" in reductions["target"]
    assert reductions["detail"] == (
        "MRL minus baseline in points: "
        "PCA of FF-d linear top-1: 20.0/20.0; PCA of FF-d 1-NN accuracy: 10.0/10.0; "
        "first m of FF-d linear top-1: 20.0/20.0; first m of FF-d 1-NN accuracy: 10.0/10.0; "
        "random projection of FF-d linear top-1: 20.0/20.0; random projection of FF-d 1-NN accuracy: 10.0/10.0")
    assert "d=128" in adaptive["target"] and "= 16" in adaptive["target"]
    assert "test accuracy 79.90% vs 80.00% at expected size 12.0" in adaptive["detail"]


def _mutate_ff_top1_32(s, c):
    set_value(s, "ff", 32, "top1", 0.88)  # MRL - FF-m = -8 points, far beyond the ~0.7 point spread


def _mutate_ff_nn1_8(s, c):
    set_value(s, "ff", 8, "nn1", 0.75)  # -5 points


def _mutate_ff_full(s, c):
    set_value(s, "ff", 128, "top1", 0.81)  # MRL - FF-d = -1 point < -0.3


def _mutate_mrl_e_below(s, c):
    set_value(s, "mrl_e", 64, "top1", 0.78)  # -2 points


def _mutate_mrl_e_above(s, c):
    set_value(s, "mrl_e", 16, "top1", 0.82)  # +2 points: the check is on |gap|


def _mutate_pca_nn1(s, c):
    set_value(s, "ff_pca", 8, "nn1", 0.71)  # baseline beats MRL by 1 point at size 8


def _mutate_random_proj_tie(s, c):
    set_value(s, "ff_random_proj", 16, "top1", 0.80)  # a tie is not "below MRL"


def _mutate_first_m_nn1(s, c):
    set_value(s, "ff_first_m", 16, "nn1", 0.70)  # tie at 16 on 1-NN


def _mutate_adaptive_accuracy(s, c):
    for p in c:
        if p["max_drop"] == 0.0:
            p["accuracy"] = 0.790  # 1 point below MRL at d


def _mutate_adaptive_size(s, c):
    for p in c:
        if p["max_drop"] == 0.0:
            p["expected_size"] = 20.0  # > d / 8 = 16


@pytest.mark.parametrize("mutate, failing, details", [
    (_mutate_ff_top1_32, 0, ["32: -8.00", "8: +2.00"]),
    (_mutate_ff_nn1_8, 1, ["8: -5.00", "16: +2.00"]),
    (_mutate_ff_full, 2, ["MRL - FF-d = -1.00 points"]),
    (_mutate_mrl_e_below, 3, ["64: -2.00", "16: -0.50"]),
    (_mutate_mrl_e_above, 3, ["16: +2.00"]),
    (_mutate_pca_nn1, 4, ["PCA of FF-d 1-NN accuracy: -1.0/10.0", "PCA of FF-d linear top-1: 20.0/20.0"]),
    (_mutate_random_proj_tie, 4, ["random projection of FF-d linear top-1: 20.0/0.0"]),
    (_mutate_first_m_nn1, 4, ["first m of FF-d 1-NN accuracy: 10.0/0.0"]),
    (_mutate_adaptive_accuracy, 5, ["test accuracy 79.00% vs 80.00% at expected size 12.0"]),
    (_mutate_adaptive_size, 5, ["test accuracy 79.90% vs 80.00% at expected size 20.0"]),
], ids=["top1", "nn1", "full-size", "mrl_e-below", "mrl_e-above", "pca-nn1", "random-proj-tie",
        "first-m-tie", "adaptive-accuracy", "adaptive-size"])
def test_each_target_can_fail(mutate, failing, details):
    summary, curves = make_summary(), make_curves()
    mutate(summary, curves)
    targets = check_targets(summary, curves, SIZES, TARGETS)
    expected = [True] * 6
    expected[failing] = False
    assert [t["passed"] for t in targets] == expected, targets
    for d in details:
        assert d in targets[failing]["detail"], targets[failing]["detail"]


def test_small_negative_gap_within_seed_spread_passes():
    # MRL 0.5 points below FF-m at 32; spread hypot(.5, .5) = 0.71 points covers it
    summary = set_value(make_summary(), "ff", 32, "top1", 0.805)
    t = check_targets(summary, make_curves(), SIZES, TARGETS)[0]
    assert t["passed"]
    assert "32: -0.50" in t["detail"]
    # without the spread it misses
    for r in summary:
        r["top1_std"] = 0.0
    t = check_targets(summary, make_curves(), SIZES, TARGETS)[0]
    assert not t["passed"]
    assert "32: -0.50" in t["detail"]


def test_full_size_small_shortfall_within_tolerance_passes():
    summary = set_value(make_summary(), "ff", 128, "top1", 0.802)  # -0.2 points, tolerance 0.3
    t = check_targets(summary, make_curves(), SIZES, TARGETS)[2]
    assert t["passed"]
    assert t["detail"] == "MRL - FF-d = -0.20 points"


def test_check_targets_uses_only_sizes_given():
    # FF-d far ahead on 1-NN at 128: the 1-NN target only covers sizes <= 64 and the full-size one is top-1 only
    summary = set_value(make_summary(), "ff", 128, "nn1", 0.99)
    assert [t["passed"] for t in check_targets(summary, make_curves(), SIZES, TARGETS)] == [True] * 6


# --- write_tables ----------------------------------------------------------------------------------------------


def make_meta(backbone="resnet18", command="python benchmarks/reproduce.py --quick"):
    meta = {"config": {"data": {"source": "synthetic"}, "model": {"encoder": "mlp", "backbone": backbone},
                       "train": {"epochs": 3, "optimizer": "adamw", "lr": 0.001}, "seeds": [0, 1]},
            "seconds": 123.4, "train_seconds": 45.2, "mlflow_run_id": "run-abc123"}
    if command is not None:
        meta["command"] = command
    return meta


def make_rows() -> list[dict]:
    return [{"method": m, "seed": seed, "size": s, "top1": BASE[m][0], "nn1": BASE[m][1], "map": BASE[m][2]}
            for m in METHODS for seed in (0, 1) for s in SIZES]


def _write(tmp_path, summary=None, meta=None, curves=None):
    summary = make_summary() if summary is None else summary
    curves = make_curves() if curves is None else curves
    targets = check_targets(summary, curves, SIZES, TARGETS) if {r["method"] for r in summary} == set(METHODS) else []
    meta = make_meta() if meta is None else meta
    rows = make_rows()
    files = write_tables(tmp_path, "res", summary, rows, curves, targets, meta)
    return files, summary, rows, curves, targets, meta


def test_write_tables_files(tmp_path):
    files, *_ = _write(tmp_path)
    assert files == [tmp_path / "res.md", tmp_path / "res.csv", tmp_path / "res_per_seed.csv",
                     tmp_path / "res.json"]
    assert all(f.exists() for f in files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.csv", "res.json", "res.md", "res_per_seed.csv"]


def test_write_tables_markdown(tmp_path):
    files, summary, _, _, targets, _ = _write(tmp_path)
    md = files[0].read_text()
    lines = md.splitlines()
    assert lines[0] == "# MRL reproduction: synthetic, encoder mlp resnet18, d = 128"
    assert "Command: `python benchmarks/reproduce.py --quick`" in md
    assert "Wall time 123 s (training 45 s). MLflow run run-abc123." in md
    assert "3 epoch(s), optimiser adamw lr 0.001; seeds [0, 1]" in md
    header = ("| size | MRL | MRL-E | FF-m (own model per size) | first m of FF-d | PCA of FF-d | "
              "random projection of FF-d |")
    assert lines.count(header) == 3  # linear top-1, 1-NN, mAP@10
    assert lines.count("|---:|" + "---:|" * 6) == 3
    for title in ("## linear top-1", "## 1-NN accuracy", "## mAP@10"):
        assert lines.count(title) == 1
    # one row per size in each of the three tables, with mean ± std in %
    for s in SIZES:
        assert sum(line.startswith(f"| {s} | ") for line in lines) == 3
    top1_section = lines[lines.index("## linear top-1"):lines.index("## 1-NN accuracy")]
    assert ("| 8 | 80.00 ± 0.50 | 79.50 ± 0.50 | 78.00 ± 0.50 | 60.00 ± 0.50 | 60.00 ± 0.50 | 60.00 ± 0.50 |"
            in top1_section)
    assert "| 128 | 80.00 ± 0.50 | 79.50 ± 0.50 | 80.00 ± 0.50 | 60.00 ± 0.50 | 60.00 ± 0.50 | 60.00 ± 0.50 |" \
        in top1_section
    map_section = lines[lines.index("## mAP@10"):]
    assert "| 16 | 50.00 ± 0.50 | 50.00 ± 0.50 | 48.00 ± 0.50 | 40.00 ± 0.50 | 40.00 ± 0.50 | 40.00 ± 0.50 |" \
        in map_section
    # adaptive table: one row per drop (sorted), mean over seeds
    assert "| allowed drop | expected size | test top-1 |" in lines
    assert "| 0.0 | 12.0 | 79.90 |" in lines
    assert "| 5.0 | 250.0 | 51.00 |" in lines
    assert lines.index("| 0.0 | 12.0 | 79.90 |") < lines.index("| 5.0 | 250.0 | 51.00 |")
    # targets
    assert "## Targets" in lines
    target_lines = [line for line in lines if line.startswith("- PASS: ") or line.startswith("- MISS: ")]
    assert len(target_lines) == len(targets) == 6
    assert target_lines[2] == f"- PASS: {targets[2]['target']}. {targets[2]['detail']}"


def test_write_tables_markdown_miss_and_single_seed(tmp_path):
    summary = set_value(make_summary(seeds=1), "ff", 128, "top1", 0.81)
    files, _, _, _, targets, _ = _write(tmp_path, summary=summary, meta=make_meta(command=None))
    md = files[0].read_text()
    assert "Command: `python benchmarks/reproduce.py`" in md
    assert f"- MISS: {targets[2]['target']}. MRL - FF-d = -1.00 points" in md
    # a single seed: no ± in the cells
    assert "| 8 | 80.00 | 79.50 | 78.00 | 60.00 | 60.00 | 60.00 |" in md
    assert not any("±" in line for line in md.splitlines() if line.startswith("| "))


def test_write_tables_only_present_methods(tmp_path):
    summary = [r for r in make_summary() if r["method"] in ("ff", "mrl")][::-1]  # FF-m rows first
    files, *_ = _write(tmp_path, summary=summary)
    lines = files[0].read_text().splitlines()
    # LABELS order (MRL before FF-m), not summary order
    assert lines.count("| size | MRL | FF-m (own model per size) |") == 3
    assert lines.count("|---:|---:|---:|") == 4  # the three metric tables + the adaptive table
    assert "| 32 | 80.00 ± 0.50 | 78.00 ± 0.50 |" in lines


def test_write_tables_csv(tmp_path):
    files, summary, *_ = _write(tmp_path)
    lines = files[1].read_text().splitlines()
    assert lines[0] == "method,size,seeds,top1,top1_std,nn1,nn1_std,map,map_std"
    assert len(lines) == 1 + len(METHODS) * len(SIZES)
    rows = [line.split(",") for line in lines[1:]]
    for method in METHODS:
        assert [int(r[1]) for r in rows if r[0] == method] == SIZES
    assert "mrl,8,2,0.8,0.005,0.7,0.005,0.5,0.005" in lines
    assert "ff,128,2,0.8,0.005,0.68,0.005,0.48,0.005" in lines


def test_write_tables_per_seed_csv(tmp_path):
    files, _, rows, *_ = _write(tmp_path)
    lines = files[2].read_text().splitlines()
    assert lines[0] == "method,seed,size,top1,nn1,map"
    assert len(lines) == 1 + len(rows) == 1 + len(METHODS) * 2 * len(SIZES)
    assert "mrl_e,1,64,0.795,0.7,0.5" in lines


def test_write_tables_json(tmp_path):
    files, summary, _, curves, targets, meta = _write(tmp_path)
    data = json.loads(files[3].read_text())
    assert set(data) == {"meta", "summary", "adaptive", "targets"}
    assert data["meta"] == meta
    assert data["summary"] == summary
    assert data["adaptive"] == curves
    assert data["targets"] == targets


def test_write_tables_does_not_mutate_inputs(tmp_path):
    summary, curves, meta = make_summary(), make_curves(), make_meta()
    before = copy.deepcopy((summary, curves, meta))
    write_tables(tmp_path, "res", summary, make_rows(), curves, [], meta)
    assert (summary, curves, meta) == before


def test_write_tables_without_backbone(tmp_path):
    files, *_ = _write(tmp_path, meta=make_meta(backbone=None))
    first = files[0].read_text().splitlines()[0]
    assert first.startswith("# MRL reproduction: synthetic, encoder mlp")
    assert first.endswith("d = 128")


def test_write_tables_without_backbone_no_stray_space(tmp_path):
    files, *_ = _write(tmp_path, meta=make_meta(backbone=None))
    assert files[0].read_text().splitlines()[0] == "# MRL reproduction: synthetic, encoder mlp, d = 128"


def test_labels_cover_methods():
    assert list(LABELS) == METHODS
