"""A sweep killed mid-way resumes by name through Tuner.restore (real Ray Tune and Train, a tiny grid)."""

import pytest

from mrl.configio import load_config

from conftest import REPO

pytestmark = pytest.mark.slow


def test_a_killed_sweep_resumes_without_retraining_finished_trials(tmp_path):
    """Kill the sweep's process (and its local Ray) after its first trial finished; the same sweep_name resumes:
    the finished trial's results are kept as they were, the rest run."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from mrl.config import TuneJobConfig
    from mrl.stages.tune import run as run_tune

    overrides = [f"output_dir={tmp_path}", "sweep_name=killed", "base.data.train_limit=800", "base.model.dim=16",
                 "base.train.epochs=2", "base.resources.num_workers=1", "search.algorithm=grid",
                 "search.num_samples=1", "search.scheduler=fifo", "space.schedules=[log]", "space.min_sizes=[4]",
                 "space.smallest_weight=[1.0, 2.0, 3.0]", "space.weight_alpha=[0.0]", "space.deploy_sizes=[8]",
                 "base.ray.num_cpus=4"]
    proc = subprocess.Popen([sys.executable, str(REPO / "tuning" / "tune.py"), "--config",
                             str(REPO / "tuning" / "search_space.yaml"), *overrides],
                            cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sweep = tmp_path / "ray" / "killed"

    def finished_trial():
        """A trial's last result.json row once it reached epoch 2 (files stay: a slow poll cannot miss one)."""
        for result in sweep.glob("*/result.json"):
            lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
            if lines and lines[-1].get("epoch") == 2:
                return lines[-1]
        return None

    first, deadline = None, time.time() + 300
    while first is None and time.time() < deadline and proc.poll() is None:
        time.sleep(2)
        first = finished_trial()
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
    proc.wait()
    first = first or finished_trial()  # one last look, should the sweep have ended between two polls
    assert first is not None, "the first trial did not finish before the deadline"
    job = load_config(TuneJobConfig, REPO / "tuning" / "search_space.yaml", overrides)
    result = run_tune(job)
    assert len(result["trials"]) == 3 and all(t["error"] is None and t["epochs"] == 2 for t in result["trials"])
    kept = [t for t in result["trials"] if t["params"]["smallest_weight"] == first["config"]["params"]["smallest_weight"]]
    assert kept[0]["metrics"]["val_top1_d8"] == first["val_top1_d8"]  # the finished trial was not trained again
