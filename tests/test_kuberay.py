"""Offline checks of the Kubernetes manifests in k8s/: the KubeRay schema written from the KubeRay v1 API reference
(k8s/kuberay-schema.json) and the core one written from the Kubernetes API reference (k8s/kubernetes-schema.json);
the rules that tie them together (shared volume, GPU group, autoscaling bounds, the Ray version); token auth on
every Ray process and the submitter from one Secret, which scripts/k8s-secrets.sh makes; the MLflow server on
PostgreSQL and its wiring; the network policies, evaluated for pairs of pods; and the RayJob's entrypoint loaded
by the real job config. No Kubernetes API is contacted; broken copies must be refused, so that each check can fail.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import REPO

K8S = REPO / "k8s"
SCHEMA = json.loads((K8S / "kuberay-schema.json").read_text())
CORE_SCHEMA = json.loads((K8S / "kubernetes-schema.json").read_text())


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def documents(name: str | None = None) -> list[dict]:
    """Every document of one manifest file, or of all of them."""
    files = [K8S / name] if name else sorted(K8S.glob("*.yaml"))
    return [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]


def find(kind: str, name: str) -> dict:
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def ray_pods(cluster: dict) -> list[dict]:
    spec = cluster["spec"]
    return [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]


def check_cluster(cluster: dict) -> None:
    """What the platform needs of its RayCluster beyond the schema."""
    import ray

    jsonschema.validate(cluster, SCHEMA)
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__, "the image's Ray must be the Ray the platform pins"
    claim = load("shared-storage.yaml")["metadata"]["name"]
    for pod in ray_pods(cluster):
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert volumes[mounts["/mnt/shared"]]["persistentVolumeClaim"]["claimName"] == claim, pod
    gpu = [g for g in spec["workerGroupSpecs"]
           if all(c["resources"]["limits"].get("nvidia.com/gpu") for c in g["template"]["spec"]["containers"])]
    assert gpu, "a worker group must request GPUs"
    for g in spec["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    assert spec["enableInTreeAutoscaling"] and any(g["maxReplicas"] > g["minReplicas"] for g in gpu)


def test_the_raycluster_validates_and_shares_one_volume_across_its_pods():
    check_cluster(load("raycluster.yaml"))
    storage = load("shared-storage.yaml")
    assert storage["kind"] == "PersistentVolumeClaim" and storage["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_rayjob_runs_a_real_job_on_that_cluster_with_output_on_the_shared_volume():
    from mrl.config import TrainJobConfig
    from mrl.configio import load_config

    job, cluster = load("rayjob.yaml"), load("raycluster.yaml")
    jsonschema.validate(job, SCHEMA)
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/train.py"] and (REPO / argv[1]).is_file()
    config, overrides = argv[argv.index("--config") + 1], argv[argv.index("--config") + 2:]
    parsed = load_config(TrainJobConfig, REPO / config, overrides)  # the overrides are real, valid keys
    assert parsed.output_dir.startswith("/mnt/shared/") and parsed.resources.use_gpu is True
    assert parsed.resources.max_failures > 0 and parsed.run_name  # a named run resumes from its checkpoints


@pytest.mark.parametrize("breakage, message", [
    (lambda m: m["spec"].pop("headGroupSpec"), "'headGroupSpec' is a required property"),
    (lambda m: m["spec"]["headGroupSpec"].update(serviceType="Ingress"), "'Ingress' is not one of"),
    (lambda m: m["spec"]["workerGroupSpecs"][0].update(replica=2), "Additional properties are not allowed"),
    (lambda m: m["spec"]["workerGroupSpecs"][0].update(maxReplicas=-1), "-1 is less than the minimum of 0"),
    (lambda m: m["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
     .update(memory="lots"), "'lots' does not match"),
    (lambda m: m.update(apiVersion="ray.io/v1alpha1"), "'ray.io/v1' was expected"),
])
def test_broken_clusters_are_refused_by_the_schema(breakage, message):
    broken = copy.deepcopy(load("raycluster.yaml"))
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate(broken, SCHEMA)


def test_broken_wiring_is_refused_by_the_platform_checks():
    cluster = load("raycluster.yaml")
    unshared = copy.deepcopy(cluster)
    unshared["spec"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "x"
    no_gpu = copy.deepcopy(cluster)
    del no_gpu["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    old_ray = copy.deepcopy(cluster)
    old_ray["spec"]["rayVersion"] = "2.9.0"
    for broken in (unshared, no_gpu, old_ray):
        with pytest.raises(AssertionError):
            check_cluster(broken)
    job = load("rayjob.yaml")
    job["spec"].pop("clusterSelector")
    with pytest.raises(jsonschema.ValidationError, match="is not valid under any of the given schemas"):
        jsonschema.validate(job, SCHEMA)


def test_no_manifest_is_left_unchecked():
    assert sorted(p.name for p in K8S.glob("*.yaml")) == [
        "mlflow.yaml", "network-policies.yaml", "raycluster.yaml", "rayjob.yaml", "shared-storage.yaml"]
    for doc in documents():
        jsonschema.validate(doc, SCHEMA if doc["apiVersion"] == "ray.io/v1" else CORE_SCHEMA)
    assert not [d for d in documents() if d["kind"] == "Secret"], "Secrets are made by scripts/k8s-secrets.sh"


# --- token auth ---------------------------------------------------------------------------------------------------

TOKEN_KEY = "auth_token"  # the Secret key KubeRay's authOptions.secretName reads (its RAY_AUTH_TOKEN_SECRET_KEY)


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def check_auth(cluster: dict, job: dict) -> str:
    """Token auth on every Ray process and the submitter, all from one Secret; returns the Secret's name."""
    auth = cluster["spec"].get("authOptions", {})
    assert auth.get("mode") == "token" and auth.get("secretName"), "the operator must know the cluster's token"
    secret = auth["secretName"]
    pods = [*ray_pods(cluster), job["spec"]["submitterPodTemplate"]["spec"]]
    for container in (c for pod in pods for c in pod["containers"]):
        env = env_of(container)
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", container["name"]
        token = env.get("RAY_AUTH_TOKEN", {})
        assert "value" not in token, f"{container['name']}: a token written into the manifest"
        assert token.get("valueFrom", {}).get("secretKeyRef") == {"name": secret, "key": TOKEN_KEY}, container["name"]
    return secret


def test_every_ray_process_and_the_submitter_demand_the_clusters_token():
    check_auth(load("raycluster.yaml"), load("rayjob.yaml"))


def test_ray_reads_the_token_from_the_variable_the_manifests_set(tmp_path):
    """What Ray 2.60 does with RAY_AUTH_TOKEN: its token loader (the C++ one every Ray process and `ray
    get-auth-token` use), in a fresh process, returns the variable's value, which wins over RAY_AUTH_TOKEN_PATH and
    ~/.ray/auth_token; without either there is no token."""
    import os
    import subprocess
    import sys

    code = ("from ray._raylet import AuthenticationTokenLoader as L; t = L.instance(); "
            "print(t.get_raw_token(ignore_auth_mode=True) if t.has_token(ignore_auth_mode=True) else 'NONE')")
    (tmp_path / "file").write_text("from-file")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "RAY_AUTH_MODE": "token"}

    def token(**extra) -> str:
        done = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    assert token(RAY_AUTH_TOKEN="from-env", RAY_AUTH_TOKEN_PATH=str(tmp_path / "file")) == "from-env"
    assert token(RAY_AUTH_TOKEN_PATH=str(tmp_path / "file")) == "from-file"
    assert token() == "NONE"


def test_a_pod_without_the_token_or_with_a_written_one_is_refused():
    cluster, job = load("raycluster.yaml"), load("rayjob.yaml")
    no_token = copy.deepcopy(cluster)
    no_token["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"] = [
        e for e in no_token["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]
        if e["name"] != "RAY_AUTH_TOKEN"]
    written = copy.deepcopy(cluster)
    env = written["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "RAY_AUTH_TOKEN").update(value="hunter2")
    other_secret = copy.deepcopy(cluster)
    other_secret["spec"]["authOptions"]["secretName"] = "another"
    no_operator = copy.deepcopy(cluster)
    del no_operator["spec"]["authOptions"]
    for broken in (no_token, written, other_secret, no_operator):
        with pytest.raises(AssertionError):
            check_auth(broken, job)
    with pytest.raises(jsonschema.ValidationError, match="should not be valid"):
        jsonschema.validate(written, SCHEMA)  # value and valueFrom together
    unauthenticated = copy.deepcopy(job)
    unauthenticated["spec"]["submitterPodTemplate"]["spec"]["containers"][0].pop("env")
    with pytest.raises(AssertionError):
        check_auth(cluster, unauthenticated)


# --- the Secrets --------------------------------------------------------------------------------------------------


def secret_refs(node) -> set[tuple[str, str]]:
    """(Secret, key) of every secretKeyRef in a manifest, and of authOptions.secretName."""
    if isinstance(node, list):
        return set().union(*map(secret_refs, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {(node["secretKeyRef"]["name"], node["secretKeyRef"]["key"])} if "secretKeyRef" in node else set()
    if node.get("mode") == "token" and "secretName" in node:
        found.add((node["secretName"], TOKEN_KEY))
    return found.union(*map(secret_refs, node.values()))


def made_secrets() -> dict[tuple[str, str], str]:
    import subprocess

    printed = subprocess.run(["bash", str(REPO / "scripts" / "k8s-secrets.sh"), "--print"], capture_output=True,
                             text=True, check=True, timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(printed) if d]
    assert all(d["kind"] == "Secret" and d["apiVersion"] == "v1" for d in docs)
    return {(d["metadata"]["name"], key): value for d in docs for key, value in d["stringData"].items()}


def test_the_secrets_script_makes_every_secret_the_manifests_read_with_fresh_random_values():
    refs = set().union(*(secret_refs(d) for d in documents()))
    assert refs == {("mrl-ray-auth", TOKEN_KEY), ("mlflow-postgres", "password")}
    first, second = made_secrets(), made_secrets()
    assert set(first) == refs
    for ref, value in first.items():
        assert re.fullmatch(r"[0-9a-f]{64}", value), ref  # 256 random bits
        assert second[ref] != value
    script = (REPO / "scripts" / "k8s-secrets.sh").read_text()
    assert "kubectl get secret" in script and "kubectl create" in script and "--from-literal" not in script


# --- MLflow on PostgreSQL -----------------------------------------------------------------------------------------


def service_url(name: str) -> str:
    return f"http://{name}:{find('Service', name)['spec']['ports'][0]['port']}"


def is_allowed_host_header(hosts: list[str], host: str) -> bool:
    """MLflow's own Host-header check (mlflow/server/security_utils.py), loaded from its file: importing it as
    mlflow.server.security_utils first imports the whole server (Flask, the stores), ten seconds here."""
    import importlib.util

    import mlflow

    path = Path(mlflow.__file__).parent / "server" / "security_utils.py"
    spec = importlib.util.spec_from_file_location("mlflow_security_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.is_allowed_host_header(hosts, host)


def check_mlflow(docs: list[dict]) -> None:
    """The server's store is the PostgreSQL StatefulSet (user, database, password Secret), its artifacts are on the
    shared claim, each Service selects its workload's pods on the container's port, and its Host check admits
    the name the Ray pods use."""
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    pg, server = by[("StatefulSet", "mlflow-postgres")], by[("Deployment", "mlflow")]
    for workload, service in ((pg, by[("Service", "mlflow-postgres")]), (server, by[("Service", "mlflow")])):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
        ports = {p["containerPort"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert service["spec"]["ports"][0]["targetPort"] in ports
    pg_env, env = env_of(pg["spec"]["template"]["spec"]["containers"][0]), env_of(
        server["spec"]["template"]["spec"]["containers"][0])
    uri = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    user, db = pg_env["POSTGRES_USER"]["value"], pg_env["POSTGRES_DB"]["value"]
    port = by[("Service", "mlflow-postgres")]["spec"]["ports"][0]["port"]
    assert uri == f"postgresql+psycopg2://{user}@mlflow-postgres:{port}/{db}", uri
    assert env["PGPASSWORD"]["valueFrom"] == pg_env["POSTGRES_PASSWORD"]["valueFrom"]
    mounts = {m["mountPath"]: m["name"] for m in server["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in server["spec"]["template"]["spec"]["volumes"]}
    shared = [path for path, name in mounts.items()
              if volumes[name].get("persistentVolumeClaim", {}).get("claimName") == "mrl-shared"]
    assert shared and env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith(shared[0] + "/")
    assert all("ReadWriteMany" not in t["spec"]["accessModes"] for t in pg["spec"]["volumeClaimTemplates"])
    hosts = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert is_allowed_host_header(hosts, "mlflow:5000") and not is_allowed_host_header(hosts, "evil.example:5000")


def test_mlflow_runs_on_postgresql_with_artifacts_on_the_shared_volume():
    check_mlflow(documents("mlflow.yaml"))
    server = find("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert server["command"] == ["bash", "scripts/mlflow-server.sh"] and (REPO / "scripts/mlflow-server.sh").is_file()


def test_every_ray_pod_and_the_job_use_the_mlflow_server():
    from mrl.config import TrainJobConfig
    from mrl.configio import load_config

    url = service_url("mlflow")
    for pod in ray_pods(load("raycluster.yaml")):
        for container in pod["containers"]:
            assert env_of(container)["MLFLOW_TRACKING_URI"]["value"] == url, container["name"]
    argv = shlex.split(load("rayjob.yaml")["spec"]["entrypoint"])
    config, overrides = argv[argv.index("--config") + 1], argv[argv.index("--config") + 2:]
    assert load_config(TrainJobConfig, REPO / config, overrides).mlflow.tracking_uri == url


@pytest.mark.parametrize("breakage", [
    lambda d: d[1]["spec"]["template"]["spec"]["containers"][0]["env"][1].update(value="elsewhere"),
    lambda d: d[3]["spec"]["template"]["spec"]["containers"][0]["env"][0].update(
        value="postgresql+psycopg2://mlflow:pw@mlflow-postgres:5432/mlflow"),
    lambda d: d[3]["spec"]["template"]["spec"]["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"].update(
        name="other"),
    lambda d: d[3]["spec"]["template"]["spec"]["containers"][0]["env"][2].update(value="/tmp/mlartifacts"),
    lambda d: d[3]["spec"]["template"]["spec"]["containers"][0]["env"][5].update(value="localhost:*"),
    lambda d: d[2]["spec"].update(selector={"app": "mlflow-server"}),
    lambda d: d[1]["spec"]["volumeClaimTemplates"][0]["spec"].update(accessModes=["ReadWriteMany"]),
], ids=["db-name", "password-in-uri", "password-secret", "artifacts-not-shared", "host-check", "selector",
        "db-on-rwx"])
def test_broken_mlflow_wiring_is_refused(breakage):
    docs = copy.deepcopy(documents("mlflow.yaml"))
    assert [d["kind"] for d in docs] == ["Service", "StatefulSet", "Service", "Deployment"]
    breakage(docs)
    with pytest.raises(AssertionError):
        check_mlflow(docs)


# --- network policies ---------------------------------------------------------------------------------------------
# NetworkPolicy semantics (networking.k8s.io/v1), evaluated here for pairs of pods: a pod no policy selects takes
# every connection; a pod some Ingress policy selects takes only what one of their rules allows. A rule without
# `from` allows every source, without `ports` every port; a peer's podSelector alone means pods of the policy's
# namespace, namespaceSelector alone every pod of the matching namespaces, both together pods matching both, and
# an ipBlock is taken to match every pod (pod addresses are not modelled, so it can only widen what is allowed).

NAMESPACE = "ml"  # where `kubectl apply -f k8s/` puts the manifests (none names one)


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels and matchExpressions; {} selects everything) against a pod's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        ok = {"In": present and value in expr.get("values", []), "NotIn": value not in expr.get("values", []),
              "Exists": present, "DoesNotExist": not present}[expr["operator"]]
        if not ok:
            return False
    return True


def peer_matches(peer: dict, source: dict) -> bool:
    if "ipBlock" in peer:
        return True
    namespace_labels = {"kubernetes.io/metadata.name": source["namespace"]}
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], namespace_labels)
    else:
        in_namespace = source["namespace"] == NAMESPACE
    return in_namespace and selects(peer.get("podSelector", {}), source["labels"])


def allowed(policies: list[dict], source: dict, target: dict, port: int) -> bool:
    """Whether `source` may open a TCP connection to `port` of `target` (pods: {"labels", "namespace"})."""
    selecting = [p for p in policies if target["namespace"] == NAMESPACE
                 and selects(p["spec"]["podSelector"], target["labels"])
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True
    for rule in (r for p in selecting for r in p["spec"].get("ingress", [])):
        ports = rule.get("ports")
        port_ok = not ports or any(p.get("protocol", "TCP") == "TCP" and isinstance(p["port"], int)
                                   and p["port"] <= port <= p.get("endPort", p["port"]) for p in ports)
        if port_ok and (not rule.get("from") or any(peer_matches(peer, source) for peer in rule["from"])):
            return True
    return False


def pods() -> dict[str, dict]:
    """The pods these manifests make, with the labels KubeRay gives Ray pods (ray.io/cluster, ray.io/node-type)."""
    cluster = load("raycluster.yaml")["metadata"]["name"]
    ray = {"ray.io/cluster": cluster}
    template = lambda kind, name: find(kind, name)["spec"]["template"]["metadata"]["labels"]  # noqa: E731
    return {
        "head": {"labels": {**ray, "ray.io/node-type": "head"}, "namespace": NAMESPACE},
        "worker": {"labels": {**ray, "ray.io/node-type": "worker", "ray.io/group": "gpu"}, "namespace": NAMESPACE},
        "submitter": {"labels": load("rayjob.yaml")["spec"]["submitterPodTemplate"]["metadata"]["labels"],
                      "namespace": NAMESPACE},
        "operator": {"labels": {"app.kubernetes.io/name": "kuberay-operator"}, "namespace": "kuberay-system"},
        "mlflow": {"labels": template("Deployment", "mlflow"), "namespace": NAMESPACE},
        "postgres": {"labels": template("StatefulSet", "mlflow-postgres"), "namespace": NAMESPACE},
        "stranger": {"labels": {"app": "notebook"}, "namespace": NAMESPACE},
        "outsider": {"labels": {"app": "notebook"}, "namespace": "other-team"},
    }


WHO_MAY_CONNECT = [  # (source, target, port, allowed)
    *[(src, "head", port, src in ("submitter", "operator", "worker"))
      for src in ("submitter", "operator", "worker", "stranger", "outsider", "mlflow") for port in (8265, 10001, 6379)],
    ("head", "worker", 40123, True), ("worker", "worker", 8076, True), ("worker", "head", 52365, True),
    ("stranger", "worker", 40123, False), ("submitter", "worker", 40123, False), ("operator", "worker", 8265, False),
    ("stranger", "head", 8000, True), ("outsider", "head", 8000, False), ("stranger", "head", 52365, False),
    ("head", "mlflow", 5000, True), ("worker", "mlflow", 5000, True), ("stranger", "mlflow", 5000, False),
    ("submitter", "mlflow", 5000, False), ("mlflow", "postgres", 5432, True), ("worker", "postgres", 5432, False),
    ("stranger", "postgres", 5432, False), ("head", "mlflow", 22, False),
]


def check_policies(policies: list[dict]) -> None:
    everyone = pods()
    wrong = [(s, t, port, want) for s, t, port, want in WHO_MAY_CONNECT
             if allowed(policies, everyone[s], everyone[t], port) != want]
    assert not wrong, f"(source, target, port, should be allowed) judged otherwise: {wrong}"


def test_only_the_cluster_its_submitters_and_the_operator_reach_the_head():
    policies = documents("network-policies.yaml")
    assert {p["kind"] for p in policies} == {"NetworkPolicy"}
    check_policies(policies)


@pytest.mark.parametrize("breakage", [
    lambda ps: ps.pop(0),  # no cluster-internal rule: workers cannot reach the GCS
    lambda ps: ps[1]["spec"]["ingress"][0].pop("from"),  # the job API open to every pod
    lambda ps: ps[1]["spec"]["ingress"][0]["from"][1].pop("podSelector"),  # every pod of every namespace
    lambda ps: ps[1]["spec"]["ingress"][0]["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}}),
    lambda ps: ps[1]["spec"]["ingress"][1]["from"][0].update(namespaceSelector={}),  # Serve open to all namespaces
    lambda ps: ps[2]["spec"]["ingress"][0].pop("ports"),  # MLflow on every port
    lambda ps: ps[3]["spec"]["podSelector"]["matchLabels"].update(app="postgres"),  # the database unprotected
    lambda ps: ps[0]["spec"].update(policyTypes=["Egress"]),  # workers unprotected
], ids=["no-internal", "api-open", "any-namespace", "ipblock", "serve-all-namespaces", "mlflow-all-ports",
        "db-unselected", "egress-only"])
def test_loosened_or_broken_policies_are_refused(breakage):
    policies = copy.deepcopy(documents("network-policies.yaml"))
    breakage(policies)
    for policy in policies:
        jsonschema.validate(policy, CORE_SCHEMA)  # each is still a valid NetworkPolicy...
    with pytest.raises(AssertionError, match="judged otherwise"):
        check_policies(policies)  # ...but lets the wrong pods in, or keeps the right ones out
