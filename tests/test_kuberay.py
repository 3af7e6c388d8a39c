"""Offline checks of the KubeRay manifests in k8s/: the schema written from the KubeRay v1 API reference
(k8s/kuberay-schema.json), the rules that tie them together (shared volume, GPU group, autoscaling bounds,
the Ray version), and the RayJob's entrypoint loaded by the real job config. No Kubernetes API is contacted;
broken copies must be refused, so that each check can fail."""

from __future__ import annotations

import copy
import json
import shlex

import jsonschema
import pytest
import yaml

from conftest import REPO

K8S = REPO / "k8s"
SCHEMA = json.loads((K8S / "kuberay-schema.json").read_text())


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


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
    assert sorted(p.name for p in K8S.glob("*.yaml")) == ["raycluster.yaml", "rayjob.yaml", "shared-storage.yaml"]
