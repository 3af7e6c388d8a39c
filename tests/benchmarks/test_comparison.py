"""What the image and text comparisons share (mrlbench.comparison): each seed's models, mean ± std over seeds,
table cells and the MRL >= FF-m check, on hand-made rows."""

import numpy as np
import pytest

from mrl.config import ConfigError
from mrl.configio import from_dict
from mrlbench.comparison import (
    aggregate,
    by_method_size,
    cell,
    check_results_name,
    check_seeds,
    metric_table,
    mrl_vs_ff,
    seed_jobs,
)
from mrlbench.reproduce import ReproduceConfig, model_jobs


def rows(ff_gap: float) -> list[dict]:
    """Two seeds at sizes 8 and 16: MRL at 0.60 / 0.62, FF-m `ff_gap` below it."""
    out = []
    for seed, mrl in ((0, 0.60), (1, 0.62)):
        for size in (8, 16):
            out += [{"method": "mrl", "seed": seed, "size": size, "top1": mrl},
                    {"method": "ff", "seed": seed, "size": size, "top1": mrl - ff_gap}]
    return out


def test_aggregate_mean_and_std_over_seeds_in_first_seen_order():
    summary = aggregate(rows(0.05), ["top1"])
    assert [(r["method"], r["size"]) for r in summary] == [("mrl", 8), ("ff", 8), ("mrl", 16), ("ff", 16)]
    mrl8 = summary[0]
    assert mrl8["seeds"] == 2 and mrl8["top1"] == pytest.approx(0.61)
    assert mrl8["top1_std"] == pytest.approx(np.std([0.60, 0.62], ddof=1))
    assert "top1_min" not in mrl8
    with_extremes = aggregate(rows(0.05), ["top1"], extremes=True)[0]
    assert with_extremes["top1_min"] == pytest.approx(0.60) and with_extremes["top1_max"] == pytest.approx(0.62)
    assert aggregate(rows(0.05)[:1], ["top1"])[0]["top1_std"] == 0.0  # one seed: no spread


def test_mrl_vs_ff_passes_within_the_seed_spread_and_misses_beyond_it():
    spread = np.hypot(np.std([0.60, 0.62], ddof=1), np.std([0.60, 0.62], ddof=1))  # 0.02
    ok, gaps = mrl_vs_ff(by_method_size(aggregate(rows(-0.01), ["top1"])), "top1", [8, 16])
    assert ok and [m for m, _, _ in gaps] == [8, 16]
    assert gaps[0][1] == pytest.approx(-0.01) and gaps[0][2] == pytest.approx(spread)
    ok, _ = mrl_vs_ff(by_method_size(aggregate(rows(-0.03), ["top1"])), "top1", [8, 16])
    assert not ok


def test_cells_and_a_metric_table():
    summary = aggregate(rows(0.05), ["top1"])
    assert cell(summary[0], "top1") == "61.00 ± 1.41"
    assert cell({**summary[0], "seeds": 1}, "top1") == "61.00"
    assert cell(None, "top1") == "-"
    table = metric_table(by_method_size(summary), "top1", ["mrl", "ff", "ff_pca"],
                         {"mrl": "MRL", "ff": "FF-m", "ff_pca": "PCA"}, [8, 16])
    assert table[:2] == ["| size | MRL | FF-m | PCA |", "|---:|---:|---:|---:|"]
    assert table[2] == "| 8 | 61.00 ± 1.41 | 56.00 ± 1.41 | - |"


@pytest.mark.parametrize("check, value, field", [
    (check_seeds, [], "seeds"), (check_seeds, [1, 1], "seeds"),
    (check_results_name, "", "results_name"), (check_results_name, "a/b", "results_name"),
])
def test_bad_seeds_and_results_names_are_refused(check, value, field):
    with pytest.raises(ConfigError, match=field):
        check(value)


def test_every_seed_trains_mrl_and_one_ff_model_per_size():
    cfg = from_dict(ReproduceConfig, {"model": {"dim": 16, "nesting": {"schedule": "list", "sizes": [4, 16]}}})
    jobs = seed_jobs(cfg, seed=3)
    assert list(jobs) == ["mrl", "ff_4", "ff_16"]
    assert all(job.train.seed == 3 for job in jobs.values())
    assert jobs["mrl"].model == cfg.model
    assert jobs["ff_4"].model.dim == 4 and jobs["ff_4"].model.sizes == [4]
    image = model_jobs(cfg, seed=3)  # the image comparison adds MRL-E after MRL
    assert list(image) == ["mrl", "mrl_e", "ff_4", "ff_16"] and image["mrl_e"].model.head == "mrl_e"
