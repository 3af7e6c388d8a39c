"""The multi-node MLflow setting end to end: a real PostgreSQL server (a throwaway cluster in a temp dir, password
authentication), the tracking server scripts/mlflow-server.sh starts (the one k8s/mlflow.yaml and the `ray up`
head run, with k8s/mlflow.yaml's Host-header setting), and the small pipeline run against it by separate processes:
`jobs/train.py` (its driver creates the run and registers the model; its Ray Train worker logs each epoch's
metrics), `jobs/embed.py` (Ray Data actors download the model through the server) and `jobs/index.py`; then
`mrl lineage` walks the chain back from the index. Runs, tags and the registry must be rows in PostgreSQL, the
artifacts files under the server's artifact destination, and no sqlite store may appear.

PostgreSQL's server binaries come from Debian's `postgresql` package (setup.sh --test installs it). Without them
this test fails, naming the package: it is never skipped.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from conftest import REPO, free_port

PG_USER = "mlflow"


def pg_bindir() -> Path:
    """The newest installed PostgreSQL server's bin/ (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found and shutil.which("initdb"):
        found = [Path(shutil.which("initdb")).resolve()]
    if not found:
        pytest.fail("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install -y postgresql "
                    "(setup.sh --test installs it)")
    return found[-1].parent


def as_postgres(argv: list[str], folder: Path) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the package's `postgres` user, owning `folder`."""
    if os.geteuid() != 0:
        return argv
    account = pwd.getpwnam("postgres")  # made by Debian's postgresql-common
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, account.pw_uid, account.pw_gid)
    return ["runuser", "-u", "postgres", "--", *argv]


@pytest.fixture(scope="module")
def postgres():
    """A fresh PostgreSQL cluster on 127.0.0.1:<free port>, scram-sha-256 passwords, with an empty database."""
    import psycopg2

    bindir, folder = pg_bindir(), Path(tempfile.mkdtemp(prefix="mrl-pg-"))
    password, port = secrets.token_hex(16), free_port()
    (folder / "password").write_text(password)
    initdb = [str(bindir / "initdb"), "-D", str(folder / "data"), "-U", PG_USER, "--auth=scram-sha-256",
              f"--pwfile={folder / 'password'}", "-E", "UTF8"]
    subprocess.run(as_postgres(initdb, folder), check=True, capture_output=True, timeout=300)
    (folder / "password").unlink()
    options = f"-k {folder} -p {port} -c listen_addresses=127.0.0.1"
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w", "-t", "120"]
    subprocess.run(as_postgres([*pg_ctl, "-o", options, "start"], folder), check=True, capture_output=True,
                   timeout=180)
    dsn = f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}"
    try:
        conn = psycopg2.connect(f"{dsn}/postgres")
        conn.autocommit = True  # CREATE DATABASE runs outside a transaction
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        yield {"port": port, "password": password, "dsn": f"{dsn}/mlflow"}
    finally:
        subprocess.run(as_postgres([*pg_ctl, "-m", "fast", "stop"], folder), capture_output=True, timeout=180)
        shutil.rmtree(folder, ignore_errors=True)


def manifest_allowed_hosts() -> str:
    server = next(d for d in yaml.safe_load_all((REPO / "k8s" / "mlflow.yaml").read_text())
                  if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in server["spec"]["template"]["spec"]["containers"][0]["env"]}
    return env["MLFLOW_SERVER_ALLOWED_HOSTS"]


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    """scripts/mlflow-server.sh on 127.0.0.1:<free port>; yields its URI and the artifact destination."""
    shared = tmp_path_factory.mktemp("shared")
    port = free_port()
    env = {**os.environ, "PGPASSWORD": postgres["password"], "PYTHON": sys.executable,
           "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{postgres['port']}/mlflow",
           "MLFLOW_ARTIFACTS_DESTINATION": str(shared / "mlartifacts"), "MLFLOW_HOST": "127.0.0.1",
           "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "2", "MLFLOW_SERVER_ALLOWED_HOSTS": manifest_allowed_hosts()}
    log = open(shared / "server.log", "w")
    server = subprocess.Popen(["bash", str(REPO / "scripts" / "mlflow-server.sh")], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while not _healthy(uri):
            assert server.poll() is None, (shared / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "the MLflow server did not answer /health in 300 s"
            time.sleep(2)
        yield {"uri": uri, "shared": shared, "artifacts": shared / "mlartifacts"}
    finally:
        stop_group(server)
        log.close()


def stop_group(process: subprocess.Popen) -> None:
    """Stop the process group this module started (the server and its workers): TERM, then KILL after 20 s (the
    server waits for idle keep-alive connections of this test process before it exits on TERM)."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


def _healthy(uri: str) -> bool:
    try:
        return requests.get(f"{uri}/health", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def run_job(argv: list[str], timeout: float = 900) -> str:
    """A job's entry point in a process of its own (each starts and stops its own local Ray)."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the job's mlflow.tracking_uri alone names the store
    done = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def pipeline(tracking_server):
    """train -> embed -> index against the server, each stage a separate process; returns the output directory."""
    uri, out = tracking_server["uri"], tracking_server["shared"] / "outputs"
    common = [f"output_dir={out}", f"mlflow.tracking_uri={uri}"]
    run_job(["jobs/train.py", "--config", "jobs/train.yaml", *common, "ray.num_cpus=4", "run_name=pg",
             "data.train_limit=1200", "train.epochs=1", "model.dim=32", "resources.num_workers=1",
             "resources.use_gpu=false"])
    run_job(["jobs/embed.py", "--config", "jobs/embed.yaml", *common, "ray.num_cpus=4", "data.train_limit=1200",
             "embed.splits=[train]", "embed.num_actors=1", "embed.rows_per_file=600"])
    run_job(["jobs/index.py", "--config", "jobs/index.yaml", *common, f"embeddings={out}/embeddings/latest",
             "index.calibrate=false"])
    return out


@pytest.mark.slow
def test_the_pipeline_records_everything_in_postgresql_and_the_lineage_walk_holds(pipeline, tracking_server,
                                                                                   postgres):
    from mlflow import MlflowClient

    uri = tracking_server["uri"]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mrl").experiment_id])
    by_stage = {r.data.tags.get("mrl.stage"): r for r in runs}
    assert {"train", "embed", "index"} <= set(by_stage), sorted(by_stage)
    history = client.get_metric_history(by_stage["train"].info.run_id, "val_top1_d8")
    assert [m.step for m in history] == [1]  # logged by the Ray Train worker, a process apart from the driver
    version = client.get_model_version("mrl-fashion-mnist", "1")
    assert version.run_id == by_stage["train"].info.run_id
    assert by_stage["embed"].data.tags["mrl.input_run_id"] == by_stage["train"].info.run_id
    assert by_stage["index"].data.tags["mrl.input_run_id"] == by_stage["embed"].info.run_id

    lineage = subprocess.run([sys.executable, "-m", "mrl.cli", "lineage", f"output_dir={pipeline}",
                              f"mlflow.tracking_uri={uri}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert lineage.returncode == 0, lineage.stdout + lineage.stderr[-3000:]
    kinds = [line.split()[0] for line in lineage.stdout.splitlines() if line.strip()]
    assert kinds[:3] == ["index", "embeddings", "model"] and "BROKEN" not in lineage.stdout, lineage.stdout
    assert {"training", "dataset"} <= set(kinds), lineage.stdout  # the training run and its data, via the server
    check_the_store_is_postgresql(postgres, tracking_server, pipeline, by_stage)


def check_the_store_is_postgresql(postgres, tracking_server, out: Path, by_stage: dict) -> None:
    """The runs are rows of the PostgreSQL database; artifacts are files under the server's destination, reached
    through the server (mlflow-artifacts:/); nothing wrote a sqlite store."""
    import psycopg2

    with psycopg2.connect(postgres["dsn"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_uuid, artifact_uri FROM runs")
        rows = dict(cur.fetchall())
        cur.execute("SELECT name FROM registered_models")
        models = [name for (name,) in cur.fetchall()]
    assert {r.info.run_id for r in by_stage.values()} <= set(rows) and models == ["mrl-fashion-mnist"]
    assert all(rows[r.info.run_id].startswith("mlflow-artifacts:/") for r in by_stage.values())
    weights = list(tracking_server["artifacts"].rglob("model.safetensors"))
    assert len(weights) == 1 and weights[0].stat().st_size > 1000
    assert not list(out.rglob("*.db"))


@pytest.mark.slow
def test_the_server_answers_the_kubernetes_service_name_and_refuses_other_hosts(tracking_server):
    """k8s/mlflow.yaml's MLFLOW_SERVER_ALLOWED_HOSTS on the real server: the Ray pods' Host header is answered,
    an unknown one gets 403 (MLflow's default would refuse the Service name too)."""
    url = f"{tracking_server['uri']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(url, headers={"Host": "mlflow:5000"}, timeout=30).status_code == 200
    assert requests.get(url, headers={"Host": "mlflow.ml.svc.cluster.local:5000"}, timeout=30).status_code == 200
    assert requests.get(url, headers={"Host": "evil.example:5000"}, timeout=30).status_code == 403


@pytest.mark.parametrize("uri, message", [
    ("sqlite:////tmp/mlflow.db", "must be a postgresql+psycopg2:// URI"),
    ("postgresql://mlflow@db:5432/mlflow", "must be a postgresql+psycopg2:// URI"),
    ("postgresql+psycopg2://mlflow:hunter2@db:5432/mlflow", "put the password in PGPASSWORD"),
])
def test_the_server_script_refuses_other_stores_and_passwords_on_the_command_line(uri, message, tmp_path):
    env = {"PATH": os.environ["PATH"], "MLFLOW_BACKEND_STORE_URI": uri, "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path)}
    done = subprocess.run(["bash", str(REPO / "scripts" / "mlflow-server.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr
