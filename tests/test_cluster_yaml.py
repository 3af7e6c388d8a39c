"""Offline checks of cluster.yaml, the Ray cluster-launcher config for AWS.

`ray up` cannot run here (no cloud access), so the file is checked the way `ray up` checks it
before contacting AWS: Ray's own `prepare_config` (merges the AWS defaults shipped with Ray, fills
per-node-type worker limits; purely local) and `validate_config` (jsonschema against
ray/autoscaler/ray-schema.json plus Ray's consistency checks). On top of that, concrete content is
asserted, and broken copies must be rejected so that the schema check can actually fail.

Nothing is mocked except that AWS (or any network) is never contacted: sockets and boto3 clients
raise if anything tries.
"""

from __future__ import annotations

import copy
import re
import socket
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
HEAD = "ray.head.default"
GPU_WORKER = "ray.worker.gpu"


@pytest.fixture(autouse=True)
def _aws_is_never_contacted(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted while checking cluster.yaml: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    try:
        import boto3
    except ImportError:
        return
    monkeypatch.setattr(boto3, "client", refuse)
    monkeypatch.setattr(boto3, "resource", refuse)
    monkeypatch.setattr(boto3.session.Session, "client", refuse)
    monkeypatch.setattr(boto3.session.Session, "resource", refuse)


@pytest.fixture
def raw() -> dict:
    with open(CLUSTER_YAML) as f:
        config = yaml.safe_load(f)
    assert isinstance(config, dict)
    return config


@pytest.fixture
def prepared(raw) -> dict:
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


# --- Ray's own validation -------------------------------------------------------------------------


def test_raw_config_passes_ray_validation(raw):
    validate_config(copy.deepcopy(raw))


def test_prepared_config_passes_ray_validation(raw):
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    # prepare_config is what `ray up` runs before bootstrapping AWS: it kept our settings
    assert config["cluster_name"] == "mrl"
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] == HEAD
    assert set(config["available_node_types"]) == {HEAD, GPU_WORKER}
    assert config["available_node_types"][HEAD]["max_workers"] == 0  # filled in by Ray
    # our head_setup_commands replaced the defaults' (the autoscaler needs boto3 on the head)
    assert any("boto3" in cmd for cmd in config["head_setup_commands"])


def test_prepare_config_does_not_mutate_its_input(raw):
    before = copy.deepcopy(raw)
    prepare_config(raw)
    assert raw == before


# --- concrete content ---------------------------------------------------------------------------


def test_node_types(raw):
    assert raw["cluster_name"] == "mrl"
    assert raw["head_node_type"] == HEAD
    types = raw["available_node_types"]
    assert types[HEAD]["node_config"]["InstanceType"].startswith("m5.")
    assert "GPU" not in types[HEAD]["resources"]
    assert types[GPU_WORKER]["node_config"]["InstanceType"] == "g5.xlarge"


def test_gpu_worker_declares_a_gpu(raw, prepared):
    for config in (raw, prepared):
        resources = config["available_node_types"][GPU_WORKER]["resources"]
        assert resources == {"CPU": 4, "GPU": 1}
        assert isinstance(resources["GPU"], int) and resources["GPU"] >= 1


def test_every_node_type_sets_an_image_id(raw):
    # Without ImageId Ray falls back to its built-in Ubuntu 18.04 DLAMI, whose Python is too old.
    images = {name: t["node_config"].get("ImageId") for name, t in raw["available_node_types"].items()}
    assert all(images.values()), images
    assert len(set(images.values())) == 1, "all node types must use the same AMI"
    assert "Deep Learning AMI" in CLUSTER_YAML.read_text()  # the placeholder is explained


def test_min_and_max_workers_are_consistent(raw, prepared):
    for config in (raw, prepared):
        global_max = config["max_workers"]
        assert isinstance(global_max, int) and global_max >= 1
        total_min = 0
        for name, node_type in config["available_node_types"].items():
            lo = node_type.get("min_workers", 0)
            hi = node_type.get("max_workers", 0 if name == HEAD else global_max)
            assert 0 <= lo <= hi <= global_max, (name, lo, hi, global_max)
            total_min += lo
        assert total_min <= global_max
    gpu = raw["available_node_types"][GPU_WORKER]
    assert (gpu["min_workers"], gpu["max_workers"], raw["max_workers"]) == (0, 4, 4)


def test_setup_installs_the_project_with_the_gpu_extra(raw, prepared):
    setup = raw["setup_commands"]

    def index(pattern: str) -> int:
        hits = [i for i, cmd in enumerate(setup) if re.search(pattern, cmd)]
        assert hits, f"no setup command matches {pattern!r}: {setup}"
        return hits[0]

    install = index(r"pip install -e \S*mrl\[gpu\]")
    uninstall_cpu = index(r"pip uninstall -y faiss-cpu\b")
    reinstall_gpu = index(r"pip install .*--force-reinstall.*faiss-gpu")
    # faiss-cpu is a base dependency, so it is removed after the project install, and faiss-gpu
    # (which shares its files) is reinstalled after that.
    assert install < uninstall_cpu < reinstall_gpu
    # setup_commands run on every node: Ray merges them into both head and worker setup
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert prepared[key][: len(setup)] == setup, key
    # the extra really exists in the project metadata
    assert re.search(r"^gpu\s*=\s*\[.*faiss-gpu", (REPO / "pyproject.toml").read_text(), re.M)


def test_file_mounts_copy_the_repo(raw):
    assert raw["file_mounts"] == {"~/mrl": "."}
    assert (REPO / "pyproject.toml").is_file()  # "." is the repo root `ray up` runs from
    assert "~/.ray/auth_token" in raw["cluster_synced_files"]


def test_start_commands(raw):
    head = raw["head_start_ray_commands"]
    worker = raw["worker_start_ray_commands"]
    assert head[0] == "ray stop" and worker[0] == "ray stop"
    head_start = head[-1]
    for flag in ("--head", "--port=6379", "--dashboard-host=127.0.0.1",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml"):
        assert flag in head_start.split(), flag
    assert "--address=$RAY_HEAD_IP:6379" in worker[-1].split()
    # token auth on every node; the head creates the token before Ray starts
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker[-1]
    assert any("ray get-auth-token --generate" in cmd for cmd in head[:-1])


def header() -> str:
    return "".join(line for line in CLUSTER_YAML.read_text().splitlines(keepends=True) if line.startswith("#"))


def test_header_explains_how_to_launch():
    for text in ("ray up cluster.yaml", "RAY_AUTH_MODE=token", "ray job submit",
                 "--working-dir .", "--config jobs/train.yaml", "output_dir", "NFS",
                 "sandbox", "'mlflow.tracking_uri=$MLFLOW_TRACKING_URI'"):
        assert text in header(), text


def test_the_dashboard_is_reached_through_ssh_only():
    """The token travels in clear HTTP: the header sends clients through `ray dashboard` (an SSH tunnel to the
    head's loopback, where the dashboard listens), never through an opened port."""
    text = " ".join(header().replace("#", " ").split())
    assert "ray dashboard cluster.yaml" in text and "--address http://localhost:8265" in text
    assert not re.search(r"open (TCP )?(port )?(8265|6379|10001)\b", text, re.I), "the header opens a Ray port"
    assert "http://<head>:8265" not in text


# --- what the security group lets in -----------------------------------------------------------------------------

RAY_PORTS = (8265, 6379, 10001, 5000)  # dashboard + job API, GCS, Ray client, MLflow


def ray_inbound_rules():
    """Ray's own `_create_default_inbound_rules` (ray/autoscaler/_private/aws/config.py), taken from its source: the
    module imports boto3 at the top, which the tests do not install, and these three functions need only itertools."""
    import ast
    import itertools

    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "_private" / "aws" / "config.py"
    wanted = {"_create_default_inbound_rules", "_create_default_intracluster_inbound_rules",
              "_create_default_ssh_inbound_rules"}
    functions = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    assert {f.name for f in functions} == wanted, f"Ray's {path} no longer defines {sorted(wanted)}"
    namespace = {"itertools": itertools}
    exec(compile(ast.Module(functions, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["_create_default_inbound_rules"]


def world_open_ports(config: dict) -> set[int]:
    """The ports of RAY_PORTS that the inbound rules Ray creates for this config open to any address.

    Ray's AWS provider makes one security group per cluster with `_create_default_inbound_rules` (all traffic
    between the cluster's nodes, SSH from anywhere) plus provider.security_group.IpPermissions; a security group
    named in a node_config is used as it is and cannot be checked here, so none may be named."""
    for name, node in config["available_node_types"].items():
        assert "SecurityGroupIds" not in node["node_config"], f"{name} names a security group checked nowhere"
    extra = config["provider"].get("security_group", {}).get("IpPermissions", [])
    opened = set()
    for rule in ray_inbound_rules()(["sg-cluster"], extra):
        anyone = {r.get("CidrIp") for r in rule.get("IpRanges", [])} & {"0.0.0.0/0"} or \
            {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])} & {"::/0"}
        if not anyone:
            continue
        if rule.get("IpProtocol") == "-1" or rule.get("FromPort", -1) == -1:
            opened |= set(RAY_PORTS)
        else:
            opened |= {p for p in RAY_PORTS if rule["FromPort"] <= p <= rule["ToPort"]}
    return opened


def test_no_inbound_rule_opens_ray_or_mlflow_ports_to_the_world(raw, prepared):
    for config in (raw, prepared):
        assert world_open_ports(config) == set()


@pytest.mark.parametrize("rule", [
    {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    {"FromPort": 6000, "ToPort": 11000, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    {"FromPort": 10001, "ToPort": 10001, "IpProtocol": "tcp", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
    {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
])
def test_a_rule_opening_a_ray_port_to_the_world_is_refused(raw, rule):
    config = copy.deepcopy(raw)
    config["provider"]["security_group"] = {"GroupName": "mrl", "IpPermissions": [rule]}
    validate_config(copy.deepcopy(config))  # Ray itself accepts it...
    assert world_open_ports(config)  # ...this check does not
    config["provider"]["security_group"]["IpPermissions"] = [
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}]
    assert world_open_ports(config) == set()  # a private range is not the world
    config["available_node_types"][HEAD]["node_config"]["SecurityGroupIds"] = ["sg-0123"]
    with pytest.raises(AssertionError, match="names a security group"):
        world_open_ports(config)


# --- MLflow on PostgreSQL on the head ----------------------------------------------------------------------------


def test_the_head_serves_mlflow_from_postgresql_to_the_cluster(raw, prepared):
    setup, start = prepared["head_setup_commands"], raw["head_start_ray_commands"]
    assert "bash ~/mrl/scripts/head-mlflow.sh setup" in setup
    ray_start = next(i for i, cmd in enumerate(start) if "ray start --head" in cmd)
    assert start.index("bash ~/mrl/scripts/head-mlflow.sh start") < ray_start  # Ray inherits the server's URI
    assert "export MLFLOW_TRACKING_URI=$(bash ~/mrl/scripts/head-mlflow.sh uri);" in start[ray_start]
    assert not any("head-mlflow" in cmd for cmd in prepared["worker_setup_commands"] + raw["worker_start_ray_commands"])
    script = (REPO / "scripts" / "head-mlflow.sh").read_text()
    assert 'MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow"' in script
    assert '"$here/mlflow-server.sh"' in script and "MLFLOW_HOST=0.0.0.0 MLFLOW_PORT=5000" in script
    for name in ("head-mlflow.sh", "mlflow-server.sh"):
        subprocess.run(["bash", "-n", str(REPO / "scripts" / name)], check=True)  # parses


# --- broken copies must be rejected -------------------------------------------------------------


def _unknown_top_level_key(c):
    c["max_worker"] = 4


def _max_workers_as_string(c):
    c["max_workers"] = "4"


def _node_max_workers_as_string(c):
    c["available_node_types"][GPU_WORKER]["max_workers"] = "4"


def _gpu_count_as_string(c):
    c["available_node_types"][GPU_WORKER]["resources"]["GPU"] = "1"


def _unknown_node_type_field(c):
    c["available_node_types"][GPU_WORKER]["instance_type"] = "g5.xlarge"


def _missing_node_config(c):
    del c["available_node_types"][GPU_WORKER]["node_config"]


def _missing_provider(c):
    del c["provider"]


def _head_type_not_declared(c):
    c["head_node_type"] = "ray.head.gpu"


def _min_workers_exceed_global_max(c):
    c["available_node_types"][GPU_WORKER]["min_workers"] = 5


BROKEN = [
    (_unknown_top_level_key, jsonschema.ValidationError),
    (_max_workers_as_string, jsonschema.ValidationError),
    (_node_max_workers_as_string, jsonschema.ValidationError),
    (_gpu_count_as_string, jsonschema.ValidationError),
    (_unknown_node_type_field, jsonschema.ValidationError),
    (_missing_node_config, jsonschema.ValidationError),
    (_missing_provider, jsonschema.ValidationError),
    (_head_type_not_declared, ValueError),
    (_min_workers_exceed_global_max, ValueError),
]


@pytest.mark.parametrize("which", ["raw", "prepared"])
@pytest.mark.parametrize("break_it, error", BROKEN, ids=[f.__name__.strip("_") for f, _ in BROKEN])
def test_broken_copy_is_rejected(request, which, break_it, error):
    config = copy.deepcopy(request.getfixturevalue(which))
    validate_config(copy.deepcopy(config))  # the intact copy is accepted...
    break_it(config)
    with pytest.raises(error):  # ...the broken one is not
        validate_config(config)
