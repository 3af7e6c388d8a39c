"""Autoscaling for real, offline: a head of 1 CPU started with Ray's fake multi-node provider (autoscaling.yaml
beside this file), and a platform job that asks for more than the head has. The autoscaler launches worker nodes
(real raylets on this machine) for the job's pending actors, the job runs on them, and once they are idle they are
removed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from .conftest import cluster_processes, kill_processes, log_tiny_model, wait_for
from conftest import REPO, free_port

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).with_name("autoscaling.yaml")


@pytest.fixture(scope="module")
def autoscaling_head():
    """`ray start --head` with the autoscaler config, on free ports and in a private temp dir (short: Ray's socket
    paths live there). Torn down process by process: everything whose command line names the temp dir or the
    GCS address, and their descendants (the monitor starts the worker nodes)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    temp = tempfile.mkdtemp(prefix="mrl-as-", dir="/tmp")
    config = yaml.safe_load(CONFIG.read_text())
    config["provider"]["gcs_address"] = address
    (Path(temp) / "autoscaling.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled"}
    head_cpus = config["available_node_types"]["ray.head.default"]["resources"]["CPU"]
    ray_bin = str(Path(sys.executable).parent / "ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        try:
            subprocess.run([ray_bin, "start", "--head", f"--port={port}", f"--num-cpus={head_cpus}",
                            f"--autoscaling-config={temp}/autoscaling.yaml", f"--temp-dir={temp}/ray",
                            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
                            f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
                            "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=180)
            yield address
        finally:
            ray.shutdown()
            left = kill_processes(cluster_processes([temp, address]))
            shutil.rmtree(temp, ignore_errors=True)
            assert not left, f"processes of the autoscaling cluster still alive: {sorted(left)}"


def test_a_job_bigger_than_the_head_adds_nodes_that_go_away_when_idle(autoscaling_head, tmp_path, fashion_shards):
    """run_embed joins the cluster through `ray.address` and asks for 2 actors of 2 CPUs on a head of 1 CPU: the
    autoscaler adds the 2 worker nodes the job needs (no more: max_workers 2), every actor runs on them, the
    output is complete, and 6 s of idleness later (idle_timeout_minutes 0.1) both nodes are gone."""
    import ray
    from ray.util.state import list_actors

    from mrl.config import EmbedJobConfig
    from mrl.configio import load_config
    from mrl.stages.embed import run as run_embed
    from mrl.stages.embed import verify_split

    model_uri = log_tiny_model(tmp_path)
    job = load_config(EmbedJobConfig, REPO / "jobs" / "embed.yaml", [
        f"output_dir={tmp_path}", f"model_uri={model_uri}", "run_name=scaled", "embed.splits=[train]",
        "embed.rows_per_file=500", "embed.batch_size=250", "data.train_limit=10000",
        f"data.shards_path={fashion_shards}", "embed.num_actors=2", "embed.cpus_per_actor=2",
        f"ray.address={autoscaling_head}"])
    started = time.time()
    result = run_embed(job)  # ensure_ray joins the autoscaling cluster
    assert ray.is_initialized()

    nodes = ray.nodes()
    head = [n for n in nodes if n["Resources"].get("node:__internal_head__")]
    added = [n for n in nodes if not n["Resources"].get("node:__internal_head__")]
    assert len(head) == 1 and head[0]["Resources"]["CPU"] == 1
    assert len(added) == 2 and all(n["Resources"]["CPU"] == 2 for n in added), \
        [(n["NodeID"][:8], n["Resources"].get("CPU"), n["Alive"]) for n in nodes]
    workers = [a for a in list_actors(address=autoscaling_head, detail=True, limit=10000)
               if (a.class_name or "").startswith("MapWorker(")]  # the embed stage's actor pool
    assert len(workers) == 2 and {w.node_id for w in workers} == {n["NodeID"] for n in added}, \
        [(w.state, w.node_id[:8]) for w in workers]
    assert result["rows"] == {"train": 10000}
    split = Path(result["path"]) / "train"
    assert verify_split(split, np.arange(10000)) == {"rows": 10000, "files": 20, "duplicates": 0, "missing": 0}

    # idle nodes go away: the head is the only live node again
    wait_for(lambda: [n["NodeID"] for n in ray.nodes() if n["Alive"]] == [head[0]["NodeID"]], 120,
             "the added nodes to be removed when idle", interval=1)
    print(f"autoscaling: 2 nodes added for the job, removed {time.time() - started:.0f}s after it started")
