"""deploy/: the cluster launcher configs, the KubeRay RayJob, the image definition and the
Grafana dashboard parse and hold what they must."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from mmotif.config import load_config
from mmotif.runtime.metrics import COUNTER, METRICS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _torch_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d.replace(" ", "") for d in deps if re.match(r"torch\s*==", d)]
    assert len(pins) == 1, deps
    return pins[0]


# ------------------------------------------------------------------ cluster launcher


@pytest.fixture(params=["aws.yaml", "gcp.yaml"])
def launcher(request):
    return request.param, yaml.safe_load((DEPLOY / request.param).read_text())


def test_launcher_config_has_required_fields(launcher):
    name, cfg = launcher
    for key in ("cluster_name", "provider", "head_node_type", "available_node_types",
                "max_workers", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, f"{name}: no {key}"
    assert cfg["provider"]["type"] == name.removesuffix(".yaml")
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    for tname, t in types.items():
        for key in ("min_workers", "max_workers", "resources", "node_config"):
            assert key in t, f"{name}: node type {tname} has no {key}"
        assert 0 <= t["min_workers"] <= t["max_workers"], (name, tname)
        assert t["resources"].get("CPU", 0) > 0, (name, tname)
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    cpu = [t for t in workers.values() if not t["resources"].get("GPU")]
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert cpu and any(t["max_workers"] > t["min_workers"] for t in cpu), "CPU type must autoscale"
    assert gpu, f"{name}: no GPU worker type for the learner and annotators"
    # the cluster preset's annotator (tensor parallel, one node) + the learner fit one GPU node
    need = load_config(preset_name="cluster").annotator.tensor_parallel_size + 1
    assert max(t["resources"]["GPU"] for t in gpu) >= need
    assert sum(t["max_workers"] for t in workers.values()) <= cfg["max_workers"]
    # driver pinned to the head through a custom resource (mmotif submit --entrypoint-resources)
    assert types[cfg["head_node_type"]]["resources"].get("head") == 1


def test_launcher_config_passes_rays_own_schema(launcher):
    """The cluster launcher's JSON schema (offline: defaults filled in, no cloud calls)."""
    util = pytest.importorskip("ray.autoscaler._private.util")  # private: skip if it moves
    name, cfg = launcher
    util.validate_config(util.prepare_config(cfg))
    bad = yaml.safe_load((DEPLOY / name).read_text())
    bad["available_node_types"][bad["head_node_type"]]["min_worker"] = 0  # a typo is caught
    with pytest.raises(Exception, match="min_worker"):
        util.validate_config(util.prepare_config(bad))


def test_launcher_binds_dashboard_locally_and_exports_metrics(launcher):
    name, cfg = launcher
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head
    assert "--metrics-export-port=8080" in head
    assert "--metrics-export-port=8080" in " ".join(cfg["worker_start_ray_commands"])
    assert "$RAY_HEAD_IP" in " ".join(cfg["worker_start_ray_commands"])
    assert cfg["docker"]["image"] and cfg["cluster_name"] == "mmotif"


# ------------------------------------------------------------------ KubeRay


def _kuberay():
    return list(yaml.safe_load_all((DEPLOY / "kuberay-rayjob.yaml").read_text()))


def test_rayjob_has_entrypoint_and_cluster_spec():
    docs = {d["kind"]: d for d in _kuberay()}
    job = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["mmotif", "run"] and "--config" in argv
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    groups = cluster["workerGroupSpecs"]
    assert len(groups) >= 2
    for g in groups:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        assert g["template"]["spec"]["containers"][0]["image"]
    gpus = [int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
            for g in groups]
    assert max(gpus) >= load_config(preset_name="cluster").annotator.tensor_parallel_size + 1
    assert cluster["rayVersion"] == __import__("ray").__version__
    # the driver asks for the head's custom resource, which the head declares
    assert json.loads(spec["entrypointResources"]) == {"head": 1}
    assert "head" in head["rayStartParams"]["resources"]


# The RayJob's fields as the KubeRay v1 CRD (ray.io_rayjobs.yaml, operator 1.5) declares
# them: names, types and required fields of the levels this manifest writes. Written for this
# test from the CRD's openAPIV3Schema; the API server prunes or rejects a field the CRD does
# not know, so a typo here is a job that silently runs without what it asked for.
def _obj(props: dict, required=(), extra=False) -> dict:
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": extra}


_S, _I, _B, _N, _O, _A = ({"type": t} for t in ("string", "integer", "boolean", "number", "object", "array"))
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_CONTAINER = _obj({k: {} for k in (
    "args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe",
    "name", "ports", "readinessProbe", "resizePolicy", "resources", "restartPolicy",
    "securityContext", "startupProbe", "stdin", "stdinOnce", "terminationMessagePath",
    "terminationMessagePolicy", "tty", "volumeDevices", "volumeMounts", "workingDir")} | {"name": _S},
    required=["name"])
_POD_SPEC = _obj({k: {} for k in (
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "dnsConfig", "dnsPolicy",
    "enableServiceLinks", "hostIPC", "hostNetwork", "hostPID", "hostname", "imagePullSecrets",
    "initContainers", "nodeName", "nodeSelector", "priorityClassName", "resources", "restartPolicy",
    "runtimeClassName", "schedulerName", "securityContext", "serviceAccountName",
    "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints", "volumes")}
    | {"containers": {"type": "array", "items": _CONTAINER, "minItems": 1}}, required=["containers"])
_POD_TEMPLATE = _obj({"metadata": _obj({"annotations": _STRING_MAP, "labels": _STRING_MAP, "name": _S,
                                        "namespace": _S, "finalizers": _A}),
                      "spec": _POD_SPEC})
_GROUP_COMMON = {"rayStartParams": _STRING_MAP, "template": _POD_TEMPLATE, "resources": _STRING_MAP,
                 "labels": _STRING_MAP}
RAYJOB_SPEC_SCHEMA = _obj({
    "activeDeadlineSeconds": _I, "backoffLimit": _I, "clusterSelector": _STRING_MAP,
    "deletionStrategy": _O, "entrypoint": _S, "entrypointNumCpus": _N, "entrypointNumGpus": _N,
    "entrypointResources": _S, "jobId": _S, "managedBy": _S, "metadata": _STRING_MAP,
    "preRunningDeadlineSeconds": _I, "runtimeEnvYAML": _S, "shutdownAfterJobFinishes": _B,
    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
    "submitterConfig": _O, "submitterPodTemplate": _POD_TEMPLATE, "suspend": _B,
    "ttlSecondsAfterFinished": _I,
    "rayClusterSpec": _obj({
        "authOptions": _obj({"enableK8sTokenAuth": _B, "mode": {"enum": ["disabled", "token"]},
                             "secretName": _S}),
        "autoscalerOptions": _O, "enableInTreeAutoscaling": _B, "gcsFaultToleranceOptions": _O,
        "headServiceAnnotations": _STRING_MAP, "managedBy": _S, "rayVersion": _S, "suspend": _B,
        "headGroupSpec": _obj({**_GROUP_COMMON, "enableIngress": _B, "headService": _O,
                               "serviceType": _S}, required=["template"]),
        "workerGroupSpecs": {"type": "array", "items": _obj({
            **_GROUP_COMMON, "groupName": _S, "idleTimeoutSeconds": _I, "maxReplicas": _I,
            "minReplicas": _I, "numOfHosts": _I, "replicas": _I, "scaleStrategy": _O, "suspend": _B},
            required=["groupName", "maxReplicas", "minReplicas", "template"])},
    }, required=["headGroupSpec"]),
}, required=["entrypoint"])


def _rayjob_spec() -> dict:
    return next(d for d in _kuberay() if d["kind"] == "RayJob")["spec"]


def test_rayjob_follows_the_kuberay_crd():
    import jsonschema

    jsonschema.validate(_rayjob_spec(), RAYJOB_SPEC_SCHEMA)


@pytest.mark.parametrize("break_it", [
    lambda s: s["rayClusterSpec"]["headGroupSpec"].update(rayStartParms={}),      # typo
    lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"].update({"num-cpus": 4}),
    lambda s: s["rayClusterSpec"]["workerGroupSpecs"][1].pop("minReplicas"),
    lambda s: s["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(imag="x"),
])
def test_the_crd_check_catches_what_the_api_server_would_refuse(break_it):
    import jsonschema

    spec = _rayjob_spec()
    break_it(spec)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, RAYJOB_SPEC_SCHEMA)


def _rayjob_pod_templates(spec: dict) -> dict:
    """name -> pod template of every pod the RayJob starts: head, worker groups, job submitter."""
    cluster = spec["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"], "submitter": spec.get("submitterPodTemplate", {})}
    pods.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return pods


def test_rayjob_dashboard_is_fenced_by_a_network_policy_and_token_auth():
    docs = _kuberay()
    job = next(d for d in docs if d["kind"] == "RayJob")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert len(policies) == 1, "a NetworkPolicy must fence the Ray pods (the dashboard binds 0.0.0.0)"
    policy = policies[0]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    selector = policy["podSelector"]["matchLabels"]
    for name, template in _rayjob_pod_templates(job["spec"]).items():
        labels = template.get("metadata", {}).get("labels", {})
        assert selector.items() <= labels.items(), f"the {name} pod is outside the NetworkPolicy"
    for rule in policy["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        peers_are_ray_pods = all(peer.keys() == {"podSelector"} and peer["podSelector"]["matchLabels"] == selector
                                 for peer in rule["from"])
        assert peers_are_ray_pods or (ports and 8265 not in ports and 6379 not in ports), \
            f"a rule lets other pods reach the dashboard or GCS: {rule}"
    # token auth pinned, not left to Ray's version default (KubeRay >= 1.5.1 generates the Secret)
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}


def test_rayjob_config_is_mounted_and_valid(tmp_path):
    docs = {d["kind"]: d for d in _kuberay()}
    spec = docs["RayJob"]["spec"]
    argv = shlex.split(spec["entrypoint"])
    config_path = Path(argv[argv.index("--config") + 1])
    preset = argv[argv.index("--preset") + 1] if "--preset" in argv else "paper"
    cm = docs["ConfigMap"]
    run_yaml = cm["data"][config_path.name]
    (tmp_path / config_path.name).write_text(run_yaml)
    cfg = load_config(tmp_path / config_path.name, preset)  # a valid mmotif config
    assert cfg.cluster.address == "auto"  # joins the RayJob's cluster
    # every pod that may run the driver mounts the ConfigMap at the config's folder
    cluster = spec["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + \
           [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert volumes[mounts[str(config_path.parent)]]["configMap"]["name"] == cm["metadata"]["name"]


# ------------------------------------------------------------------ image


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines, buf = [], ""
    for raw in text.splitlines():
        if not buf and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        buf += raw
        word, _, rest = buf.strip().partition(" ")
        lines.append((word.upper(), rest.strip()))
        buf = ""
    return lines


def test_dockerfile_installs_the_package_with_vllm_and_pins_torch():
    steps = _dockerfile()
    known = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "EXPOSE", "ENTRYPOINT", "CMD",
             "LABEL", "USER", "ADD", "SHELL", "HEALTHCHECK", "VOLUME", "STOPSIGNAL"}
    assert {w for w, _ in steps} <= known
    first = next(i for i, (w, _) in enumerate(steps) if w != "ARG")
    assert steps[first][0] == "FROM"
    base_args = " ".join(a for w, a in steps if w == "ARG") + " " + steps[first][1]
    assert "nvidia/cuda" in base_args and "cudnn" in base_args  # a CUDA base image
    runs = [a for w, a in steps if w == "RUN"]
    assert any("python3.11" in r for r in runs)
    pin = _torch_pin()  # torch==2.13.0
    installs = [r for r in runs if "pip install" in r and re.search(r"""\.\[[^\]]*\bvllm\b[^\]]*\]""", r)]
    assert installs, "the image must `pip install .[vllm]`"
    extras = set(re.search(r"\.\[([^\]]*)\]", installs[0]).group(1).split(","))
    assert {"s3", "gcs"} <= extras, "paths.storage on a bucket needs the s3/gcs fsspec backends in the image"
    # the package install carries the torch pin (or a constraints file holding it)
    for r in installs:
        assert pin in r.replace('"', "") or "-c " in r
    assert any(f"echo \"{pin}\"" in r and "constraints" in r for r in runs)
    assert any(pin in r.replace('"', "") for r in runs if "pip install" in r)
    copied = " ".join(a for w, a in steps if w == "COPY")
    assert "pyproject.toml" in copied and "src" in copied
    # the build context lets through what the COPY lines need
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for needed in ("!pyproject.toml", "!README.md", "!src/"):
        assert needed in ignore


# PyPI's Linux wheel of each pinned torch and the CUDA major it is built for (its
# nvidia-*-cuNN requirements); the image and the hosts' drivers must follow it
TORCH_WHEEL_CUDA_MAJOR = {"2.13.0": 13}


def _cuda_major_of_image() -> int:
    steps = _dockerfile()
    base = " ".join(a for w, a in steps if w in ("ARG", "FROM"))
    found = re.findall(r"nvidia/cuda:(\d+)\.\d+", base)
    assert len(set(found)) == 1, base
    return int(found[0])


def test_image_drivers_and_torch_agree_on_cuda():
    from mmotif.models.device import _MIN_DRIVER
    pin = _torch_pin().split("==")[1]
    major = TORCH_WHEEL_CUDA_MAJOR[pin]
    assert _cuda_major_of_image() == major
    families = re.findall(r"family/(\S+)", (DEPLOY / "gcp.yaml").read_text())
    assert families
    for family in families:  # a Deep Learning VM with a driver new enough for that CUDA
        assert int(re.search(r"nvidia-(\d+)$", family).group(1)) >= _MIN_DRIVER[major], family
    table = (DEPLOY / "README.md").read_text()
    assert f"`{pin}`" in table and f">= {_MIN_DRIVER[major]}" in table


def test_gated_weights_have_a_token_and_a_cache_everywhere():
    assert any(w == "ENV" and "HF_HOME=/mnt/hf-cache" in a for w, a in _dockerfile())
    for name in ("aws.yaml", "gcp.yaml"):
        cfg = yaml.safe_load((DEPLOY / name).read_text())
        options = " ".join(cfg["docker"]["run_options"])
        assert "HF_TOKEN_PATH=/mnt/hf-token" in options and ":/mnt/hf-cache" in options, name
        assert "/mnt/hf-token" in cfg["file_mounts"], name
    docs = _kuberay()
    spec = next(d for d in docs if d["kind"] == "RayJob")["spec"]
    claims = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    pods = _rayjob_pod_templates(spec)
    gpu_pods = [t["spec"] for t in pods.values()
                if t and "nvidia.com/gpu" in t["spec"]["containers"][0].get("resources", {}).get("limits", {})]
    assert gpu_pods
    for pod in gpu_pods:
        container = pod["containers"][0]
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = {v["name"]: v for v in pod["volumes"]}[mounts["/mnt/hf-cache"]]
        assert "ReadWriteMany" in claims[volume["persistentVolumeClaim"]["claimName"]]["accessModes"]


def test_only_the_head_pod_mounts_the_run_folder():
    """The driver (on the head) is the only writer of run files; workers get everything
    through Ray, so the runs volume needs no shared filesystem."""
    docs = _kuberay()
    spec = next(d for d in docs if d["kind"] == "RayJob")["spec"]
    claims = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for name, template in _rayjob_pod_templates(spec).items():
        if not template:
            continue
        volumes = template["spec"].get("volumes", [])
        runs = [v for v in volumes if v.get("persistentVolumeClaim", {}).get("claimName") == "mmotif-runs"]
        assert bool(runs) == (name == "head"), name
    assert claims["mmotif-runs"]["accessModes"] == ["ReadWriteOnce"]
    images = re.findall(r"image:\s*(\S+)", (DEPLOY / "kuberay-rayjob.yaml").read_text())
    assert images and all(i.startswith("<registry>/mmotif:") for i in images)


# ------------------------------------------------------------------ Grafana


def test_grafana_dashboard_shows_every_metric():
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    for m in METRICS:
        series = [e for e in exprs if re.search(rf"\bray_{m.name}\b", e)]
        assert series, f"no panel for ray_{m.name}"
        for e in series:
            if m.kind == COUNTER:
                assert "rate(" in e or "increase(" in e, e
            for tag in m.tags:
                assert tag in e, (m.name, tag, e)
    for p in panels:
        assert p["datasource"]["type"] == "prometheus"
        assert all(t["datasource"]["type"] == "prometheus" for t in p["targets"])
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "SessionName"} <= names


def test_grafana_dashboard_is_generated_from_metrics():
    out = subprocess.run([sys.executable, str(DEPLOY / "grafana_dashboard.py")],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == json.loads((DEPLOY / "grafana-dashboard.json").read_text()), \
        "regenerate: python deploy/grafana_dashboard.py > deploy/grafana-dashboard.json"


def test_readme_walks_through_each_path():
    text = (DEPLOY / "README.md").read_text()
    for needle in ("aws.yaml", "gcp.yaml", "kuberay-rayjob.yaml", "Dockerfile",
                   "grafana-dashboard.json", "mmotif submit", "--runtime-env-mode",
                   "tensor_parallel_size", "envs_per_actor", "STRICT_PACK"):
        assert needle in text, needle
