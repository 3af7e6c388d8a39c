"""`ray job submit --working-dir . -- python jobs/train.py ...` against a real `ray start --head` cluster."""

import os
import subprocess
import sys

import pytest

from conftest import free_port, submit_train_job

pytestmark = pytest.mark.slow


@pytest.fixture
def head_node(monkeypatch):
    # A fresh head with token auth off on both sides (see ray-notes: auth is on once a token file exists).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    gcs, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    subprocess.run([ray_bin, "start", "--head", f"--port={gcs}", "--num-cpus=4", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=180)


def test_train_job_submitted_to_a_cluster(head_node, tmp_path):
    from ray.job_submission import JobSubmissionClient

    submit_train_job(JobSubmissionClient(head_node), tmp_path, "submitted")
