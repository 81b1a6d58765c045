"""deploy/kubernetes: the KubeRay manifests are well-formed and run what exists.

No Kubernetes API server is reachable here (``kubectl apply --dry-run=client``
needs one for custom resources), so the manifests are checked against the
fields of KubeRay's ray.io/v1 RayCluster and RayJob that a cluster needs,
and the program the RayJob runs is run on one machine.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

yaml = pytest.importorskip("yaml")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy", "kubernetes")
RAY_VERSION = re.search(r'"ray\[default\]==([\d.]+)"',
                        open(os.path.join(DEPLOY, "Dockerfile")).read()).group(1)


def _load(name):
    with open(os.path.join(DEPLOY, name)) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    assert len(docs) == 1, f"{name}: one resource per file"
    return docs[0]


def _quantity(q: str) -> float:
    units = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "m": 1e-3}
    for u, k in units.items():
        if q.endswith(u):
            return float(q[:-len(u)]) * k
    return float(q)


def _check_pod_template(where, template, container_name):
    spec = template["spec"]
    containers = spec["containers"]
    assert containers and containers[0]["name"] == container_name, where
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for c in containers:
        assert c["image"], f"{where}: container {c['name']} has no image"
        res = c["resources"]
        for k in ("cpu", "memory"):
            assert _quantity(res["requests"][k]) <= _quantity(res["limits"][k]), f"{where}: {k}"
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{where}: mounts undeclared volume {m['name']}"
            assert m["mountPath"].startswith("/")
    return spec


def _check_cluster_spec(where, spec):
    assert spec["rayVersion"] == RAY_VERSION, f"{where}: rayVersion must match the image's Ray"
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), \
        f"{where}: rayStartParams values are strings"
    head_pod = _check_pod_template(f"{where} head", head["template"], "ray-head")
    ports = {p["name"]: p["containerPort"] for p in head_pod["containers"][0]["ports"]}
    assert ports["gcs-server"] == 6379 and ports["dashboard"] == 8265
    groups = spec["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    for g in groups:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
        _check_pod_template(f"{where} {g['groupName']}", g["template"], "ray-worker")
    return head_pod


def test_raycluster_manifest_has_what_kuberay_requires():
    rc = _load("raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", rc["metadata"]["name"])
    _check_cluster_spec("RayCluster", rc["spec"])


def test_rayjob_runs_a_program_that_exists_and_is_mounted():
    job = _load("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert isinstance(spec["shutdownAfterJobFinishes"], bool)
    head_pod = _check_cluster_spec("RayJob", spec["rayClusterSpec"])
    cmd = spec["entrypoint"].split()
    assert cmd[0] == "python"
    script = cmd[1]
    mounts = {m["mountPath"]: m["name"] for m in head_pod["containers"][0]["volumeMounts"]}
    mount = mounts[os.path.dirname(script)]
    volume = next(v for v in head_pod["volumes"] if v["name"] == mount)
    # the ConfigMap the README's `kubectl create configmap` makes from the file
    assert volume["configMap"]["name"] == "shoal-job"
    assert os.path.exists(os.path.join(DEPLOY, os.path.basename(script)))


def test_configmap_command_builds_offline():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(["kubectl", "create", "configmap", "shoal-job",
                          f"--from-file={os.path.join(DEPLOY, 'shoal_job.py')}",
                          "--dry-run=client", "-o", "yaml"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cm = yaml.safe_load(out.stdout)
    assert cm["kind"] == "ConfigMap" and "shoal_job.py" in cm["data"]


def test_dockerfile_installs_shoal_and_the_ray_the_manifests_name():
    text = open(os.path.join(DEPLOY, "Dockerfile")).read()
    assert text.startswith("#") and "\nFROM python:3.11" in text
    assert "wget" in text                     # KubeRay's probes
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in src.split():
            assert os.path.exists(os.path.join(ROOT, path)), f"Dockerfile copies missing {path}"


@pytest.mark.slow
def test_the_job_program_runs_on_one_machine(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, SHOAL_STORAGE=str(tmp_path))
    env.pop("RAY_ADDRESS", None)
    env.pop("SHOAL_BACKEND", None)
    out = subprocess.run([sys.executable, os.path.join(DEPLOY, "shoal_job.py")], env=env,
                         capture_output=True, text=True, timeout=110, cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "trained 2 workers" in out.stdout
