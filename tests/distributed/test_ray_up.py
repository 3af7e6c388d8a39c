"""`ray up` for real: the on-premise launcher config cluster-local.yaml (`provider: type: local`) brought up over
SSH on this machine's loopback, a training job submitted to it, and `ray down`.

The fast tests check cluster-local.yaml offline against Ray's schema (Ray's own `prepare_config` and
`validate_config`, as tests/test_cluster_yaml.py does for the AWS cluster.yaml).

The slow test runs the real launcher. It needs `sshd`, `ssh`, `ssh-keygen` and `rsync` (`./setup.sh --test`, which
./test.sh runs, installs them) and root. What it sets up, all of it private to the test and removed afterwards:

- an ed25519 client key and host key, and an `sshd` of its own on a free loopback port (its own config,
  AuthorizedKeysFile and HostKey; the system's sshd and ~/.ssh are not touched). The launcher has no SSH
  port setting, so the concrete config reaches that port through `auth.ssh_proxy_command` (a few lines of
  Python relaying stdin/stdout to 127.0.0.1:<port>), with `head_ip: 127.0.0.1`.
- that sshd runs as PID 1 of a PID namespace of its own (`unshare --pid --fork --mount-proc`). `ray down`
  always runs a plain `ray stop` on the head over SSH (hard-coded in Ray's `teardown_cluster`; the config
  cannot change it), and `ray stop` kills every Ray process it can see. Inside the namespace it sees only
  this cluster's processes, so other Ray clusters on the machine survive it (checked with a decoy process
  named `raylet` outside the namespace). Killing the namespace's PID 1 at teardown kills whatever is left.
- the SSH sessions get their own HOME (so ~/mrl, ~/ray_bootstrap_config.yaml, ~/ray_bootstrap_key.pem and
  the cluster's ~/.ray/auth_token land in a temporary directory) and RAY_TMPDIR (Ray's session directory and
  the local provider's cluster state), through sshd's SetEnv.

Not isolated the other way round: a global `ray stop` run by someone else on the machine (e.g. the teardown
of tests/e2e/test_job_submit.py) also kills this test's cluster and its decoy.

`ray up` is run from a copy of the repository's files as git lists them (tracked and untracked, not ignored)
instead of the checkout itself: Ray hashes every file under a file_mounts source, .gitignore'd ones included
(rsync_filter only applies to the copy), and a checkout's outputs/ can hold gigabytes (~30 s of hashing here
for 14 GB). The copy also gets an outputs/ and a .git/ with a marker file each, to check that rsync_filter and
rsync_exclude keep them off the head.
"""

from __future__ import annotations

import copy
import getpass
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from conftest import REPO, submit_train_job

CLUSTER_LOCAL = REPO / "cluster-local.yaml"
LOCAL_NODE_TYPE = "local.cluster.node"  # the single node type Ray's local provider uses
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def raw() -> dict:
    config = yaml.safe_load(CLUSTER_LOCAL.read_text())
    assert isinstance(config, dict)
    return config


# --- offline: Ray's own validation of cluster-local.yaml (fast) -----------------------------------------------


def test_cluster_local_yaml_passes_ray_validation(raw):
    validate_config(copy.deepcopy(raw))
    prepared = prepare_config(copy.deepcopy(raw))  # local provider: purely local, no SSH yet
    validate_config(prepared)
    assert raw == yaml.safe_load(CLUSTER_LOCAL.read_text())  # prepare_config copied, did not mutate
    assert prepared["provider"]["type"] == "local"
    # the local provider replaces node types with its single one, sized by worker_ips
    assert prepared["head_node_type"] == LOCAL_NODE_TYPE
    assert set(prepared["available_node_types"]) == {LOCAL_NODE_TYPE}
    node_type = prepared["available_node_types"][LOCAL_NODE_TYPE]
    assert node_type["min_workers"] == node_type["max_workers"] == prepared["max_workers"] == 0
    # setup_commands run on head and workers alike
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert prepared[key][: len(raw["setup_commands"])] == raw["setup_commands"], key


def test_cluster_local_yaml_content(raw):
    assert raw["provider"]["type"] == "local"
    assert isinstance(raw["provider"]["head_ip"], str) and raw["provider"]["worker_ips"] == []
    assert set(raw["auth"]) == {"ssh_user", "ssh_private_key"}
    assert not {"available_node_types", "head_node", "worker_nodes"} & set(raw)  # the local provider refuses them
    assert raw["file_mounts"] == {"~/mrl": "."}
    assert "~/.ray/auth_token" in raw["cluster_synced_files"]
    assert raw["rsync_filter"] == [".gitignore"] and "**/.git" in raw["rsync_exclude"]
    assert any("pip install -e" in cmd and "mrl" in cmd for cmd in raw["setup_commands"])
    head, worker = raw["head_start_ray_commands"], raw["worker_start_ray_commands"]
    assert head[0] == "ray stop" and worker[0] == "ray stop"
    assert any("ray get-auth-token --generate" in cmd for cmd in head[:-1])
    head_start, worker_start = head[-1].split(), worker[-1].split()
    # the slow test below rewrites exactly these port flags
    for flag in ("--head", "--port=6379", "--dashboard-port=8265", "--dashboard-host=127.0.0.1",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml"):
        assert head_start.count(flag) == 1, flag
    assert "--address=$RAY_HEAD_IP:6379" in worker_start
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    header = "".join(line for line in CLUSTER_LOCAL.read_text().splitlines(keepends=True) if line.startswith("#"))
    for text in ("ray up cluster-local.yaml", "ray down cluster-local.yaml", "RAY_AUTH_MODE=token",
                 "ray job submit", "openssh-server", "rsync", "ray stop", "NFS", "ray dashboard cluster-local.yaml"):
        assert text in header, text


def _unknown_top_level_key(c):
    c["head_ips"] = ["127.0.0.1"]


def _worker_ips_not_a_list(c):
    c["provider"]["worker_ips"] = "192.168.0.11"


def _ssh_port_in_auth(c):
    c["auth"]["ssh_port"] = 2222  # the launcher has no SSH port setting (the slow test uses ssh_proxy_command)


def _head_start_not_a_list(c):
    c["head_start_ray_commands"] = "ray start --head"


@pytest.mark.parametrize("break_it", [_unknown_top_level_key, _worker_ips_not_a_list, _ssh_port_in_auth,
                                      _head_start_not_a_list], ids=lambda f: f.__name__.strip("_"))
def test_broken_copy_is_rejected(raw, break_it):
    broken = copy.deepcopy(raw)
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_local_provider_needs_head_ip(raw):
    broken = copy.deepcopy(raw)
    del broken["provider"]["head_ip"]
    with pytest.raises(click.ClickException, match="head_ip"):  # Ray's cli_logger.abort, before any SSH
        prepare_config(broken)


# --- `ray up` / `ray job submit` / `ray down` for real (slow) ---------------------------------------------------

RELAY = """\
import os, socket, sys, threading
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def up():
    while data := os.read(0, 65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(65536):
    os.write(1, data)
"""


@dataclass
class SSHHost:
    port: int
    key: Path
    proxy_command: str
    home: Path  # HOME of the SSH sessions: the "head node's" home directory
    ray_tmpdir: Path  # RAY_TMPDIR of the SSH sessions and of `ray up`/`ray down`
    ns_init: int  # PID (in this namespace) of the sshd that is PID 1 of the private PID namespace
    log: Path

    def ns_processes(self) -> list[tuple[int, str]]:
        """(pid, comm) of every process in the private PID namespace, its sshd included."""
        ns = os.readlink(f"/proc/{self.ns_init}/ns/pid")
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    found.append((int(entry), Path(f"/proc/{entry}/comm").read_text().strip()))
            except OSError:
                pass
        return found


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _missing_prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a private sshd that logs in root, and a PID namespace)"
    for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "unshare"):
        if not shutil.which(tool):
            return f"{tool} is missing (./setup.sh --test installs openssh-server, openssh-client and rsync)"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return ("cannot create a PID namespace, and without one `ray down`'s `ray stop` would kill every Ray "
                f"process on this machine: {probe.stderr.strip()}")
    return None


@pytest.fixture
def ssh_host(tmp_path):
    reason = _missing_prerequisites()
    if reason:
        pytest.skip(reason)
    # Ray's unix sockets live under RAY_TMPDIR and must stay under ~107 characters: a short directory
    short = Path(tempfile.mkdtemp(prefix="rayup-", dir="/tmp"))
    home, ssh_dir = short / "home", tmp_path / "ssh"
    home.mkdir()
    ssh_dir.mkdir()
    key, host_key = ssh_dir / "id_ed25519", ssh_dir / "host_ed25519"
    for path in (key, host_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mrl-ray-up-test", "-f", str(path)],
                       check=True)
    (ssh_dir / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    relay = ssh_dir / "relay.py"
    relay.write_text(RELAY)
    # the login shells the launcher opens run `source ~/.bashrc` first: put this interpreter's ray and python first
    (home / ".bashrc").write_text(f'export PATH={Path(sys.executable).parent}:"$PATH"\n')
    port = free_port()
    config = ssh_dir / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress 127.0.0.1:{port}",
        f"HostKey {host_key}",
        f"PidFile {ssh_dir / 'sshd.pid'}",
        f"AuthorizedKeysFile {ssh_dir / 'authorized_keys'}",
        "AllowUsers root",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",  # the key files sit under /tmp (world-writable), which StrictModes refuses
        "MaxStartups 50",
        "MaxSessions 50",
        f"SetEnv HOME={home} RAY_TMPDIR={short}",
        "",
    ]))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory (Debian's unit makes it)
    log = ssh_dir / "sshd.log"
    with open(log, "w") as log_file:
        unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
             "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 20
        while not port_open(port):
            assert unshare.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.1)
        (ns_init,) = _children(unshare.pid)
        host = SSHHost(port=port, key=key, proxy_command=f"{sys.executable} {relay} {port}", home=home,
                       ray_tmpdir=short, ns_init=ns_init, log=log)
        assert {name for _, name in host.ns_processes()} == {"sshd"}  # (the port probe above forked one)
        yield host
    finally:
        # SIGKILL to unshare: --kill-child kills the namespace's PID 1 (sshd), and with it the whole namespace
        unshare.send_signal(signal.SIGKILL)
        unshare.wait(timeout=30)
        shutil.rmtree(short, ignore_errors=True)


def _stage_repo(dest: Path) -> None:
    """Copy the files `git` lists (tracked and untracked, not ignored) to dest, plus an ignored outputs/ and a
    .git/ with a marker each: what `ray up` copies to the head is then checked against what must be left out."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    for ignored in ("outputs", ".git"):
        (dest / ignored).mkdir(exist_ok=True)
        (dest / ignored / "marker").write_text("must not reach the head")


def _concrete_config(host: SSHHost, cluster_name: str, gcs: int, dashboard: int) -> dict:
    """cluster-local.yaml with this machine's loopback as the head, the test's key and free ports."""
    config = yaml.safe_load(CLUSTER_LOCAL.read_text())
    config["cluster_name"] = cluster_name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(host.key),
                      "ssh_proxy_command": host.proxy_command}
    tokens = config["head_start_ray_commands"][-1].split(" ")
    for old, new in (("--port=6379", f"--port={gcs}"), ("--dashboard-port=8265", f"--dashboard-port={dashboard}")):
        assert tokens.count(old) == 1, (old, tokens)
        tokens[tokens.index(old)] = new
    # free ports for what would otherwise collide with other Ray clusters on this machine; more logical CPUs than
    # cores (ray-notes: Train + Data starve on 2); a small object store on a shared machine
    tokens += ["--num-cpus=4", f"--ray-client-server-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", "--object-store-memory=300000000"]
    config["head_start_ray_commands"][-1] = " ".join(tokens)
    return config


def _ray_cli(args: list[str], cwd: Path, host: SSHHost, timeout: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    # RAY_TMPDIR: the local provider's cluster state; TMPDIR: `ray up`'s config cache (tempfile.gettempdir())
    env.update(RAY_TMPDIR=str(host.ray_tmpdir), TMPDIR=str(host.ray_tmpdir))
    return subprocess.run([RAY, *args, "--log-color", "false"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_ray_up_submit_train_job_ray_down(ssh_host, tmp_path):
    import requests
    from ray.job_submission import JobSubmissionClient

    host = ssh_host
    timings = {}
    stage = tmp_path / "src"
    _stage_repo(stage)
    cluster_name = f"mrl-up-{os.getpid()}-{host.port}"
    gcs, dashboard = free_port(), free_port()
    config_path = tmp_path / "cluster.yaml"
    config = _concrete_config(host, cluster_name, gcs, dashboard)
    config_path.write_text(yaml.safe_dump(config))
    validate_config(prepare_config(copy.deepcopy(config)))
    # a decoy with the name `ray stop` looks for, outside the namespace: `ray down` must not kill it
    (tmp_path / "raylet").symlink_to(shutil.which("sleep"))
    decoy = subprocess.Popen([str(tmp_path / "raylet"), "600"])
    control_dir = Path("/tmp") / f"ray_ssh_{hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]}" / \
        hashlib.sha256(cluster_name.encode()).hexdigest()[:10]
    try:
        # --- ray up
        start = time.time()
        up = _ray_cli(["up", "-y", str(config_path), "--no-config-cache", "--disable-usage-stats"], stage, host, 300)
        timings["ray up"] = time.time() - start
        assert up.returncode == 0, (up.stdout + up.stderr)[-4000:]
        state = yaml.safe_load((host.ray_tmpdir / "ray" / f"cluster-{cluster_name}.state").read_text())
        assert state["127.0.0.1"]["state"] == "running", state
        assert state["127.0.0.1"]["tags"]["ray-node-status"] == "up-to-date", state
        names = [name for _, name in host.ns_processes()]
        assert "gcs_server" in names and "raylet" in names, names  # the head runs inside the namespace
        assert port_open(gcs) and port_open(dashboard)
        # file_mounts and the bootstrap files arrived in the head's home; ignored and git files did not
        mrl = host.home / "mrl"
        assert (mrl / "pyproject.toml").is_file() and (mrl / "jobs" / "train.py").is_file()
        assert (mrl / "cluster-local.yaml").read_text() == CLUSTER_LOCAL.read_text()
        assert not (mrl / "outputs").exists() and not (mrl / ".git").exists()
        assert (host.home / "ray_bootstrap_config.yaml").is_file() and (host.home / "ray_bootstrap_key.pem").is_file()
        bootstrap = yaml.safe_load((host.home / "ray_bootstrap_config.yaml").read_text())
        assert bootstrap["provider"]["type"] == "local" and bootstrap["cluster_name"] == cluster_name
        # the head generated its own token and enforces it
        token = (host.home / ".ray" / "auth_token").read_text().strip()
        assert token
        address = f"http://127.0.0.1:{dashboard}"
        assert requests.get(f"{address}/api/jobs/", timeout=10).status_code == 401
        bearer = {"Authorization": f"Bearer {token}"}
        assert requests.get(f"{address}/api/jobs/", headers=bearer, timeout=10).status_code == 200

        # --- ray job submit (the job's driver runs on the head, under the head's RAY_AUTH_MODE=token)
        start = time.time()
        submit_train_job(JobSubmissionClient(address, headers=bearer), tmp_path / "out", "x", timeout=300)
        timings["job"] = time.time() - start

        # --- ray down
        start = time.time()
        down = _ray_cli(["down", "-y", str(config_path)], stage, host, 180)
        timings["ray down"] = time.time() - start
        assert down.returncode == 0, (down.stdout + down.stderr)[-4000:]
        # ray down ran `ray stop` on the head; under load its 16 s grace period can pass before the GCS exits,
        # and it then kills what is left ("Stopped only 5 out of 6 ..."), so what counts is what remains
        assert "Running `ray stop`" in down.stdout + down.stderr, (down.stdout + down.stderr)[-4000:]
        deadline = time.time() + 30
        while (left := [p for p in host.ns_processes() if p[1] != "sshd"]) and time.time() < deadline:
            time.sleep(0.5)
        assert not left, left  # nothing of the cluster is left in the namespace
        assert not port_open(gcs) and not port_open(dashboard)
        state = yaml.safe_load((host.ray_tmpdir / "ray" / f"cluster-{cluster_name}.state").read_text())
        assert state["127.0.0.1"]["state"] == "terminated", state
        assert decoy.poll() is None, "`ray down` killed a Ray-named process outside the cluster's namespace"
    finally:
        decoy.kill()
        decoy.wait()
        shutil.rmtree(control_dir, ignore_errors=True)
        print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
