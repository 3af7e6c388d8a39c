"""The README's local-cluster block (`ray start --head` with token auth, `ray job submit` of `jobs/train.py` with
`jobs/runtime_env.yaml`), run as written from a shell whose PATH holds only a Python that has the project's
dependencies but not the project: the job must ship `mrl` itself.

What the test changes in the block, and why: it drops the first line (activating `.venv`, which would put the
project on the path and prove nothing), gives `ray start` free ports (the defaults may be taken on a test
machine), shrinks the run to one small epoch, and stops the cluster by its own processes instead of `ray stop`,
which would stop every Ray process of the machine.
"""

import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from conftest import REPO, free_port

pytestmark = pytest.mark.slow
MARKER = "<!-- job-submit: tests/e2e/test_job_submit.py runs this block -->"


def readme_block() -> list[str]:
    """The README's job-submit block as shell lines (continuations joined)."""
    text = (REPO / "README.md").read_text()
    assert MARKER in text, "README.md lost its job-submit block marker"
    block = text.split(MARKER, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return block.replace("\\\n", " ").splitlines()


def python_without_the_project(where: Path) -> Path:
    """A venv that sees this interpreter's site-packages (Ray, PyTorch, FAISS, MLflow) as a plain path: their
    `.pth` hooks, among them the editable install's finder for `mrl`, do not run, so `mrl` cannot be imported.
    It also gets a `ray` command, as a node's Python would have."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(where), "platbase": str(where)})["purelib"])
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    ray = where / "bin" / "ray"
    ray.write_text(f"#!{where}/bin/python\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n")
    ray.chmod(0o755)
    return where / "bin"


def kill_cluster(gcs_port: int) -> None:
    """Stop the processes of the cluster whose GCS listens on `gcs_port`, and only those."""
    pattern = rf"(gcs_server_port=|gcs-address=\S+:|--address=\S+:|--port=){gcs_port}\b"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _cmdline_matches(p, pattern)]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if not pids:
            return
        time.sleep(3)


def _cmdline_matches(pid: str, pattern: str) -> bool:
    try:
        return re.search(pattern, Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()) is not None
    except OSError:
        return False


def test_the_readme_block_submits_a_job_that_ships_the_project(tmp_path):
    lines = readme_block()
    assert lines[0].startswith(". .venv/bin/activate") and lines[-1].startswith("ray stop")
    gcs, dashboard, agent = free_port(), free_port(), free_port()
    out = tmp_path / "out"
    script = []
    for line in lines[1:-1]:
        if line.startswith("ray start"):
            line += f" --port={gcs} --dashboard-port={dashboard} --dashboard-agent-listen-port={agent}"
        line = line.replace("127.0.0.1:8265", f"127.0.0.1:{dashboard}")
        if "jobs/train.py" in line:
            line += (f" output_dir={out} run_name=submitted data.train_limit=1200 train.epochs=1 model.dim=32"
                     " resources.num_workers=1")
        script.append(line)
    bin_dir = python_without_the_project(tmp_path / "nodepy")
    env = {"HOME": str(tmp_path / "home"), "PATH": f"{bin_dir}:/usr/bin:/bin", "LANG": "C.UTF-8"}
    cannot = subprocess.run(["python", "-c", "import mrl"], env=env, capture_output=True, text=True)
    assert "No module named 'mrl'" in cannot.stderr, "the node's Python must not see the project"
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(script)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)
    finally:
        kill_cluster(gcs)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-4000:]
    assert "succeeded" in logs and "registered models:/mrl-fashion-mnist/1" in logs, logs[-4000:]
    assert (tmp_path / "home" / ".ray" / "auth_token").is_file()  # token auth was on: the block made a token
    from mlflow import MlflowClient

    versions = MlflowClient(f"sqlite:///{out}/mlflow.db").search_model_versions("name='mrl-fashion-mnist'")
    assert [str(v.version) for v in versions] == ["1"]
