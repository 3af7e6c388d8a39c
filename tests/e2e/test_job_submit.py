"""`ray job submit --working-dir . -- python jobs/train.py ...` against a real `ray start --head` cluster."""

import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, free_port

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
    from mlflow import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head_node)
    entrypoint = (f"{sys.executable} jobs/train.py --config jobs/train.yaml output_dir={tmp_path} "
                  "run_name=submitted data.train_limit=1200 train.epochs=1 model.dim=32 resources.num_workers=1")
    job_id = client.submit_job(entrypoint=entrypoint,
                               runtime_env={"working_dir": str(REPO), "excludes": ["outputs/", ".git/"]})
    deadline = time.time() + 600
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and time.time() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "registered models:/mrl-fashion-mnist/1" in logs
    versions = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_model_versions("name='mrl-fashion-mnist'")
    assert [str(v.version) for v in versions] == ["1"]
    assert (tmp_path / "ray" / "submitted").is_dir()  # checkpoints under the run's storage path
