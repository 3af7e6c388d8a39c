"""The tune stage's pure parts: the search space, trial configs and weights, the Pareto front and the
winner rule (mrl.stages.tune). A real sweep with ASHA runs in tests/e2e/test_stages.py."""

import pytest

from mrl.config import TuneJobConfig
from mrl.configio import from_dict, load_config
from mrl.stages.tune import full_metric, grid, nesting_weights, pareto_front, pick_winner, small_metric, trial_job

from conftest import REPO


@pytest.fixture
def job(tmp_path):
    return load_config(TuneJobConfig, REPO / "tuning" / "search_space.yaml", [f"base.data.path={tmp_path}"])


def test_trial_config_trains_its_schedule_plus_the_deploy_sizes_and_d(job):
    params = {"schedule": "uniform", "min_size": 4, "count": 4, "smallest_weight": 3.0, "weight_alpha": -0.5,
              "lr": 0.004}
    trial = trial_job(job.base, params, "t", (16,))
    assert trial.model.sizes == [4, 16, 173, 343, 512]  # uniform 4..512 in 4 steps, plus the deploy size 16
    assert trial.train.lr == 0.004 and trial.run_name == "t"
    weights = trial.model.weights
    assert sum(weights) == pytest.approx(len(weights), abs=1e-4)  # mean 1: the loss keeps its scale
    assert weights == sorted(weights, reverse=True)  # alpha < 0 and the boost favour the small sizes
    assert from_dict(TuneJobConfig, {"base": {"data": {"path": "/x"}}}).base.model.sizes  # still loads


def test_nesting_weights_follow_the_power_law_and_the_boost():
    w = nesting_weights([8, 32, 128], 128, 0.0, 1.0)
    assert w == [1.0, 1.0, 1.0]
    w = nesting_weights([8, 32, 128], 128, -0.5, 2.0)
    raw = [2 * (8 / 128) ** -0.5, (32 / 128) ** -0.5, 1.0]
    assert w == pytest.approx([r / (sum(raw) / 3) for r in raw], abs=1e-6)


def test_grid_varies_counts_only_for_the_uniform_schedule(job):
    combos = grid(job)
    log = [c for c in combos if c["schedule"] == "log"]
    uniform = [c for c in combos if c["schedule"] == "uniform"]
    assert len(uniform) == 2 * len(log) == 2 * 2 * 2 * 2  # min_sizes x boosts x alphas (x counts for uniform)
    assert {c["count"] for c in log} == {4}


def test_small_metric_is_the_smallest_deploy_size(job):
    assert small_metric(job) == "val_top1_d16"
    assert small_metric(load_config(TuneJobConfig, overrides=["base.data.path=/x"])) == "val_top1_min"


def test_pareto_front_and_the_winner_rule():
    points = [(0.80, 0.90), (0.85, 0.895), (0.70, 0.91), (0.84, 0.80), (0.85, 0.88)]
    assert pareto_front(points) == [0, 1, 2]  # 3 and 4 are beaten on both (or tied and beaten)
    assert pick_winner(points, 0.0) == 2  # only the best full-size trial qualifies
    assert pick_winner(points, 0.01) == 0  # within 1 point of 0.91: 0 (0.90) qualifies, 1 (0.895) does not
    assert pick_winner(points, 0.02) == 1  # 1 qualifies and has the best small-size accuracy
    assert pick_winner([(0.5, 0.5), (0.5, 0.5)], 0.0) == 0  # ties: the earlier trial


@pytest.fixture
def text_job(tmp_path):
    return load_config(TuneJobConfig, REPO / "tuning" / "search_space_text.yaml", [f"base.data.path={tmp_path}"])


def test_a_text_sweep_trades_pair_recall_at_10_and_searches_temperature_and_sampled_sizes(text_job):
    assert (small_metric(text_job), full_metric(text_job)) == ("val_r10_d16", "val_r10_full")
    params = {"schedule": "uniform", "min_size": 8, "count": 4, "smallest_weight": 1.0, "weight_alpha": 0.5,
              "temperature": 0.02, "sizes_per_step": 3}
    trial = trial_job(text_job.base, params, "t", (16,))
    assert trial.model.sizes == [8, 16, 48, 88, 128] and trial.train.temperature == 0.02
    assert trial.train.sizes_per_step == 3 and trial.train.negatives == "global"
    assert trial.model.weights == sorted(trial.model.weights)  # alpha > 0 favours the full size
    capped = trial_job(text_job.base, {**params, "schedule": "log", "min_size": 64, "sizes_per_step": 3}, "t")
    assert capped.model.sizes == [64, 128] and capped.train.sizes_per_step == 2  # capped at the nesting list
    kept = trial_job(text_job.base, {k: v for k, v in params.items() if k not in ("temperature", "sizes_per_step")}, "t")
    assert kept.train.temperature == 0.05 and kept.train.sizes_per_step == 0  # base's values
    combos = grid(from_dict(TuneJobConfig, {**_as_dict(text_job), "search": {"algorithm": "grid"}}))
    assert {(c["temperature"], c["sizes_per_step"]) for c in combos} == {(0.02, 0), (0.02, 3), (0.1, 0), (0.1, 3)}
    assert len(combos) == 2 ** 6  # schedules x smallest_weight x alpha x temperature x power x sizes per step
    assert {c["temperature_power"] for c in combos} == {0.0, 0.5}


def test_a_text_sweep_searches_the_temperature_power_and_keeps_every_temperature_at_most_1(text_job):
    from mrl.configio import ConfigError

    space = _as_dict(text_job)["space"]
    job = from_dict(TuneJobConfig, {**_as_dict(text_job), "search": {"algorithm": "grid"}})
    assert {(c["temperature"], c["temperature_power"]) for c in grid(job) if c["sizes_per_step"] == 0} == {
        (0.02, 0.0), (0.02, 0.5), (0.1, 0.0), (0.1, 0.5)}
    params = {"schedule": "log", "min_size": 8, "smallest_weight": 1.0, "temperature": 0.1, "temperature_power": 0.5}
    trial = trial_job(job.base, params, "t")
    assert trial.train.temperature == 0.1 and trial.train.temperature_power == 0.5
    unset = {k: v for k, v in params.items() if k != "temperature_power"}
    assert trial_job(job.base, unset, "t").train.temperature_power == 0  # base's
    with pytest.raises(ConfigError, match=r"space.temperature_power up to 1.5 gives size 8 the temperature 6.4; "
                                          r"every prefix's must be at most 1"):
        from_dict(TuneJobConfig, {**_as_dict(text_job), "space": {**space, "temperature_power": [0.0, 1.5]}})
    with pytest.raises(ConfigError, match=r"temperature_power values must be in \[0, 2\]"):
        from_dict(TuneJobConfig, {**_as_dict(text_job), "space": {**space, "temperature_power": [-1.0]}})


def _as_dict(job):
    from mrl.configio import to_dict

    return to_dict(job)


def test_text_only_knobs_are_refused_on_an_image_sweep(job):
    from mrl.configio import ConfigError

    with pytest.raises(ConfigError, match="space.temperature searches a text model's contrastive loss, but "
                                          "base.model.encoder 'cnn' is an image encoder"):
        from_dict(TuneJobConfig, {**_as_dict(job), "space": {**_as_dict(job)["space"], "temperature": [0.05]}})
    with pytest.raises(ConfigError, match="temperature values must be in"):
        from_dict(TuneJobConfig, {**_as_dict(job), "space": {**_as_dict(job)["space"], "temperature": [2.0]}})
