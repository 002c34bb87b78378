"""mmotif as a Ray job on a real two-node cluster, plus the pure sizing logic.

The cluster: `ray start --head` and a second `ray start --address` on loopback, each with its
own CPUs, temp dir, ports and Prometheus metrics export port, both with Ray token
authentication on (a per-test token). Each `ray start` runs in its own session, and the
teardown ends exactly the processes of those two sessions (SIGTERM, then SIGKILL): `ray stop`
would kill every Ray process of this user on the machine, other people's included.

Checked for real:
- `mmotif submit` of a short run through the Jobs API; the job SUCCEEDS; `mmotif status`
  and `mmotif logs` show it; the run folder holds the config it ran;
- while it runs, the rollout actors sit on both nodes and mmotif's metrics are scraped from
  the nodes' Prometheus endpoints (the driver's metric names, `ray_`-prefixed);
- a probe job shipped with `--runtime-env-mode package` (the checkout's mmotif as
  `py_modules`) places one actor per node with `rollout_actor_options` (SPREAD), sets every
  metric of `mmotif.runtime.metrics.METRICS` there, and each node's endpoint exports each
  of them under `ray_<name>` with that node's value; `mmotif stop` stops it;
- unreachable address, wrong port and missing/wrong token give errors that say what to check.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from sessions import end_sessions, free_ports, run_in_own_session

from mmotif.config import load_config, preset
from mmotif.runtime import cluster as cl
from mmotif.runtime import submit as sb
from mmotif.runtime.metrics import METRICS

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
MMOTIF = str(VENV_BIN / "mmotif")


# ============================================================================ pure logic


def _cfg(**over):
    return load_config(preset_name="local", overrides=over)


def test_plan_auto_fills_cpus_after_learner_and_annotator():
    cfg = _cfg(actors={"num_actors": "auto", "threads_per_actor": 1},
               annotator={"backend": "embedded", "num_annotators": 1, "threads": 2})
    plan = cl.plan_actors(cfg, {"CPU": 16.0})
    n, annotators, device = plan  # unpacks as a 3-tuple
    # 16 CPUs - learner 1 - embedded annotator 2 - reward trainer 0.5 = 12.5 -> 12 actors
    assert (n, annotators, device) == (12, 1, "cpu")
    assert plan.num_rollout_actors == 12
    # threads per actor divide the rest; the driver's own CPU is left out when asked
    cfg2 = _cfg(actors={"num_actors": "auto", "threads_per_actor": 2},
                annotator={"num_annotators": 0})
    assert cl.plan_actors(cfg2, {"CPU": 16.0}, driver_cpus=1).num_rollout_actors == 7


def test_plan_fixed_actor_count_and_tiny_machine(caplog):
    cfg = _cfg(actors={"num_actors": 3}, annotator={"num_annotators": 0})
    with caplog.at_level("WARNING"):
        assert cl.plan_actors(cfg, {"CPU": 2.0}).num_rollout_actors == 3
    assert "wait" in caplog.text
    auto = _cfg(actors={"num_actors": "auto"}, annotator={"num_annotators": 1, "threads": 1})
    assert cl.plan_actors(auto, {"CPU": 1.0}).num_rollout_actors == 1  # never zero


def test_plan_gpu_learner_and_vllm_annotators_from_gpus():
    cfg = load_config(preset_name="cluster", overrides={
        "actors": {"num_actors": "auto"},
        "annotator": {"num_annotators": 4, "tensor_parallel_size": 4}})
    # 2 nodes x 8 GPUs, learner takes one: 15 GPUs, but per node 8//4 + 7//4 = 3 groups
    nodes = [{"CPU": 64, "GPU": 8}, {"CPU": 64, "GPU": 8}, {"CPU": 32}]
    plan = cl.plan_actors(cfg, {"CPU": 160.0, "GPU": 16.0}, nodes=nodes)
    assert plan.learner_device == "cuda"
    assert plan.num_annotators == 3
    assert plan.num_rollout_actors == int(160 - cl.LEARNER_CPUS - 3 * cl.VLLM_ANNOTATOR_CPUS
                                          - cl.REWARD_TRAINER_CPUS)
    # without per-node info only the total counts (15 // 4 = 3), capped by num_annotators
    assert cl.plan_actors(cfg, {"CPU": 8, "GPU": 9}).num_annotators == 2
    # learner GPU goes where it costs no annotator group: 5 + 4 GPUs -> 2 groups of 4
    assert cl.plan_actors(cfg, {"CPU": 8, "GPU": 9},
                          nodes=[{"GPU": 5}, {"GPU": 4}]).num_annotators == 2


def test_plan_errors_name_what_is_missing():
    cfg = load_config(preset_name="cluster")  # learner cuda, vllm tp=4
    with pytest.raises(cl.ClusterSizingError, match="learner.device is 'cuda'"):
        cl.plan_actors(cfg, {"CPU": 8.0})
    with pytest.raises(cl.ClusterSizingError, match="tensor_parallel_size=4.*largest node: 3"):
        cl.plan_actors(cfg, {"CPU": 8.0, "GPU": 6.0}, nodes=[{"GPU": 3}, {"GPU": 3}])
    auto = _cfg(learner={"device": "auto"}, actors={"num_actors": "auto"},
                annotator={"backend": "openai", "num_annotators": 2})
    # openai annotators hold no CPU: 4 - learner 1 - reward trainer 0.5 -> 2 rollout actors
    assert cl.plan_actors(auto, {"CPU": 4.0, "GPU": 1.0}) == (2, 2, "cuda")


def test_annotator_placement_group_one_gpu_bundle_per_rank_strict_pack():
    spec = cl.annotator_placement_group(4)
    assert spec["strategy"] == "STRICT_PACK"
    assert [b["GPU"] for b in spec["bundles"]] == [1.0] * 4
    assert spec["bundles"][0]["CPU"] == cl.VLLM_ANNOTATOR_CPUS
    assert all("CPU" not in b for b in spec["bundles"][1:])
    assert len(cl.annotator_placement_group(1)["bundles"]) == 1
    with pytest.raises(ValueError):
        cl.annotator_placement_group(0)


def test_dashboard_exposure_warning(caplog):
    with caplog.at_level("WARNING"):
        assert not cl.warn_if_dashboard_exposed(_cfg())
        assert not cl.warn_if_dashboard_exposed(_cfg(cluster={"dashboard_host": "localhost"}))
        assert caplog.text == ""
        assert cl.warn_if_dashboard_exposed(_cfg(cluster={"dashboard_host": "0.0.0.0"}))
    assert "dashboard exposed on 0.0.0.0" in caplog.text


def test_rollout_actor_options_spread_and_new_actors():
    cfg = _cfg(actors={"num_actors": "auto", "threads_per_actor": 2})
    assert cl.rollout_actor_options(cfg) == {"num_cpus": 2, "scheduling_strategy": "SPREAD"}
    assert cl.new_rollout_actors(cfg, {"CPU": 9.0}, running=3) == 4
    assert cl.new_rollout_actors(_cfg(actors={"num_actors": 4}), {"CPU": 9.0}, running=3) == 1


def test_submit_pieces(tmp_path):
    cfg = _cfg(name="x y/z")
    assert sb.for_cluster(cfg).cluster.address == "auto"
    assert cfg.cluster.address is None  # the caller's config is left alone
    # a relative run folder would land in Ray's temporary working directory: the head's home
    assert sb.for_cluster(cfg).paths.run_dir == Path("~/mmotif") / cfg.paths.run_dir
    absolute = _cfg(paths={"run_dir": str(tmp_path / "keep")})
    assert sb.for_cluster(absolute).paths.run_dir == tmp_path / "keep"
    staged = sb.stage_config(sb.for_cluster(cfg), tmp_path)
    assert load_config(staged).cluster.address == "auto"
    assert load_config(staged).model_dump() == sb.for_cluster(cfg).model_dump()
    local = sb.build_runtime_env("local", tmp_path)
    assert local["working_dir"] == str(tmp_path) and "py_modules" not in local
    pkg = sb.build_runtime_env("package", tmp_path, pip=["vllm"])
    assert Path(pkg["py_modules"][0], "runtime", "submit.py").is_file()
    assert pkg["pip"]["packages"] == ["vllm"]
    assert sb.entrypoint_for("local") == "mmotif run --config run.yaml"
    assert sb.entrypoint_for("package").startswith("python -m mmotif.cli run")
    assert re.fullmatch(r"mmotif-x-y-z-\d{8}-\d{6}-[0-9a-f]{6}", sb.new_submission_id(cfg))
    assert sb.normalise_address("10.0.0.1:8265/") == "http://10.0.0.1:8265"
    with pytest.raises(sb.SubmitError):
        sb.build_runtime_env("docker", tmp_path)


def test_submit_to_unreachable_address_names_it():
    port = free_ports(1)[0]
    r = subprocess.run([MMOTIF, "submit", "--address", f"127.0.0.1:{port}", "--preset", "local"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert f"cannot reach the Ray dashboard at http://127.0.0.1:{port}" in r.stderr
    assert "connection refused" in r.stderr and "8265" in r.stderr
    r = subprocess.run([MMOTIF, "logs", "raysubmit_x"], capture_output=True, text=True,
                       timeout=120, env={k: v for k, v in os.environ.items()
                                         if k not in sb.ADDRESS_ENV_VARS})
    assert r.returncode == 2 and "no cluster address" in r.stderr


# ============================================================================ real cluster


class RayCluster:
    def __init__(self):
        (self.gcs, self.dashboard, self.client, head_nm, head_om, self.head_metrics, head_al,
         head_ag, head_re, w_nm, w_om, self.worker_metrics, w_al, w_ag, w_re) = free_ports(15)
        self.root = Path(tempfile.mkdtemp(prefix="mmr", dir="/tmp"))  # short: socket paths
        self.token = secrets.token_hex(32)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("RAY_") and k not in sb.ADDRESS_ENV_VARS}
        self.env.update({
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
            "RAY_metrics_report_interval_ms": "2000",  # export every 2 s (default 10 s)
        })
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--num-gpus", "0",
                  "--object-store-memory", str(150 * 1024 * 1024), "--disable-usage-stats"]
        self.head_cmd = [
            RAY, "start", "--head", "--port", str(self.gcs), "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard),
            "--ray-client-server-port", str(self.client), "--node-manager-port", str(head_nm),
            "--object-manager-port", str(head_om), "--metrics-export-port", str(self.head_metrics),
            "--dashboard-agent-listen-port", str(head_al), "--dashboard-agent-grpc-port", str(head_ag),
            "--runtime-env-agent-port", str(head_re), "--temp-dir", str(self.root / "h"), *common]
        self.worker_cmd = [
            RAY, "start", "--address", f"127.0.0.1:{self.gcs}", "--node-manager-port", str(w_nm),
            "--object-manager-port", str(w_om), "--metrics-export-port", str(self.worker_metrics),
            "--dashboard-agent-listen-port", str(w_al), "--dashboard-agent-grpc-port", str(w_ag),
            "--runtime-env-agent-port", str(w_re), "--temp-dir", str(self.root / "w"),
            "--resources", json.dumps({"worker_node": 1}), *common]
        self.sessions: list[int] = []
        self.address = f"http://127.0.0.1:{self.dashboard}"

    def _start(self, cmd: list[str]) -> None:
        self.sessions.append(run_in_own_session(cmd, self.env, self.root / f"start-{len(self.sessions)}"))

    def start(self) -> None:
        self._start(self.head_cmd)
        self._start(self.worker_cmd)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if len(self.alive_nodes()) == 2:
                    return
            except Exception:
                pass
            time.sleep(1)
        raise RuntimeError("the worker node did not join the head within 120 s")

    def stop(self) -> list[int]:
        left = end_sessions(self.sessions)
        shutil.rmtree(self.root, ignore_errors=True)
        return left

    # -- queries (plain HTTP with the token; no ray.init in the test process)
    def _get(self, path: str, **params):
        import requests

        r = requests.get(f"{self.address}{path}", params=params, timeout=30,
                         headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return r.json()

    def alive_nodes(self) -> list[dict]:
        data = self._get("/api/v0/nodes", limit=100, detail=1)
        return [n for n in data["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def actors_of_job(self, job_id: str) -> list[dict]:
        data = self._get("/api/v0/actors", limit=1000, detail=1, filter_keys="job_id",
                         filter_predicates="=", filter_values=job_id)
        return data["data"]["result"]["result"]

    def node_ports(self) -> dict[str, int]:
        """node id -> its Prometheus metrics port."""
        out = {}
        for n in self.alive_nodes():
            out[n["node_id"]] = self.head_metrics if n["is_head_node"] else self.worker_metrics
        return out

    def scrape(self, port: int) -> str:
        import requests

        return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

    def cli(self, *args: str, timeout: float = 120, env: dict | None = None):
        return subprocess.run([MMOTIF, *args], capture_output=True, text=True, timeout=timeout,
                              env=env or self.env)


@pytest.fixture(scope="module")
def ray_cluster():
    c = RayCluster()
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    os.environ["RAY_AUTH_TOKEN"] = c.token  # for mmotif.runtime.submit in this process
    try:
        c.start()
        yield c
    finally:
        left = c.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        assert not left, f"Ray processes still running after teardown: {left}"


def _series(text: str, name: str) -> list[tuple[dict, float]]:
    """(labels, value) of each sample of metric `name` in a Prometheus text scrape."""
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', head[len(name):]))
            out.append((labels, float(value)))
    return out


PROBE = textwrap.dedent('''
    import json, os, threading, time
    import ray
    import mmotif
    from mmotif.config import preset
    from mmotif.runtime.cluster import rollout_actor_options
    from mmotif.runtime.metrics import COUNTER, METRICS

    ray.init()

    @ray.remote
    class MetricsProbe:
        """Sets every mmotif metric from its node, as the rollout actors/driver will."""

        def __init__(self, index):
            from ray.util.metrics import Counter, Gauge
            self.index = index
            self.metrics = {m.name: (Counter if m.kind == COUNTER else Gauge)(
                m.name, description=m.description, tag_keys=m.tags) for m in METRICS}
            for m in METRICS:
                if m.kind == COUNTER:
                    self.metrics[m.name].inc(1000 + index, tags=self._tags(m))
            threading.Thread(target=self._refresh, daemon=True).start()

        def _tags(self, m):
            return {k: f"probe{self.index}" for k in m.tags} or None

        def _refresh(self):  # gauges are evicted unless re-set every export interval
            while True:
                for m in METRICS:
                    if m.kind != COUNTER:
                        self.metrics[m.name].set(1000 + self.index, tags=self._tags(m))
                time.sleep(1)

        def where(self):
            ctx = ray.get_runtime_context()
            return ctx.get_node_id(), ctx.get_worker_id()

    opts = rollout_actor_options(preset("local"))
    actors = [MetricsProbe.options(**opts).remote(i) for i in range(2)]
    where = ray.get([a.where.remote() for a in actors])
    print("PROBE " + json.dumps({"nodes": [n for n, _ in where], "workers": [w for _, w in where],
                                 "mmotif_file": mmotif.__file__}), flush=True)
    time.sleep(float(os.environ.get("PROBE_HOLD_S", "240")))
''')


def _wait(pred, timeout_s: float, every_s: float = 1.0, what: str = ""):
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(every_s)


@pytest.mark.slow
def test_submit_short_run_succeeds_on_two_nodes(ray_cluster, tmp_path):
    c = ray_cluster
    run_dir = tmp_path / "run"
    name = f"e2e-{secrets.token_hex(3)}"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "name": name,
        "time_limit_s": 30,  # the driver stops itself; the smoke-only `run` ignores it
        "annotator": {"num_annotators": 0},
        "actors": {"num_actors": 2, "envs_per_actor": 2},
        "learner": {"total_env_steps": 1_000_000, "rollout": 32, "batch_size": 128},
        "paths": {"run_dir": str(run_dir)},
    }))
    sid = f"mmotif-test-{secrets.token_hex(4)}"
    # --wait: `submit` streams the job's logs and exits 0 only if it succeeded
    submitter = subprocess.Popen(
        [MMOTIF, "submit", "--address", c.address, "--preset", "local", "--config", str(config),
         "--submission-id", sid, "--wait"],
        env=c.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = sb.connect(c.address)
    _wait(lambda: submitter.poll() is not None or sid in {j.submission_id for j in client.list_jobs()},
          60, 0.5, "the submission")
    if submitter.poll() not in (None, 0):
        pytest.fail(f"mmotif submit failed ({submitter.returncode}): {submitter.communicate()}")
    ports = {c.head_metrics: "head", c.worker_metrics: "worker"}
    seen: dict[str, set[str]] = {"head": set(), "worker": set()}
    rollout_nodes: set[str] = set()
    job_id = None
    deadline = time.monotonic() + 240
    status = "PENDING"
    while status not in sb.TERMINAL:
        assert time.monotonic() < deadline, f"job {sid} still {status} after 240 s:\n" \
                                            f"{client.get_job_logs(sid)[-4000:]}"
        time.sleep(2)
        info = client.get_job_info(sid)
        status, job_id = info.status.value, info.job_id or job_id
        for port, node in ports.items():
            try:
                seen[node] |= set(re.findall(r"^(ray_mmotif_\w+)[{ ]", c.scrape(port), re.M))
            except Exception:
                pass
        if job_id:  # actors of a finished job vanish from the state API after a while
            rollout_nodes |= {a["node_id"] for a in c.actors_of_job(job_id)
                              if a["class_name"] == "RolloutActor" and a.get("node_id")}

    try:
        out, err = submitter.communicate(timeout=60)
    finally:
        submitter.kill()
    logs = client.get_job_logs(sid)
    assert status == "SUCCEEDED", logs[-4000:]
    assert submitter.returncode == 0, err
    assert out.startswith(f"submitted job {sid} to {c.address}")
    assert f"mmotif run '{name}'" in out and out.rstrip().endswith(f"job {sid}: SUCCEEDED")
    assert f"mmotif run '{name}'" in logs
    ran = load_config(run_dir / "config.yaml")
    assert ran.name == name and ran.cluster.address == "auto"

    r = c.cli("status", sid, "--address", c.address)
    assert r.returncode == 0 and r.stdout.startswith(f"{sid}: SUCCEEDED"), r.stdout + r.stderr
    r = c.cli("status", sid, "--address", c.address, "--json")
    assert json.loads(r.stdout)["metadata"]["mmotif_run"] == name
    r = c.cli("logs", sid, "--address", c.address)
    assert r.returncode == 0 and f"mmotif run '{name}'" in r.stdout
    r = c.cli("logs", sid, "--follow", "--address", c.address)  # ended: prints all, returns
    assert r.returncode == 0 and f"mmotif run '{name}'" in r.stdout

    # what the driver does on a cluster: rollout actors on both nodes, metrics exported
    assert len(rollout_nodes) == 2, f"rollout actors on {len(rollout_nodes)} node(s)"
    exported = seen["head"] | seen["worker"]
    for m in ("mmotif_env_steps_total", "mmotif_env_steps_per_second", "mmotif_policy_version"):
        assert "ray_" + m in exported, f"ray_{m} not scraped; seen: {seen}"


@pytest.mark.slow
def test_probe_job_spreads_actors_and_exports_metrics_per_node(ray_cluster, tmp_path):
    c = ray_cluster
    (tmp_path / "probe.py").write_text(PROBE)
    client = sb.connect(c.address)
    runtime_env = sb.build_runtime_env("package", tmp_path)  # ships this checkout's mmotif
    job = client.submit_job(entrypoint="python probe.py", runtime_env=runtime_env)
    try:
        def probe_line():
            status = client.get_job_status(job).value
            assert status in ("PENDING", "RUNNING"), client.get_job_logs(job)
            m = re.search(r"^PROBE (.*)$", client.get_job_logs(job), re.M)
            return json.loads(m.group(1)) if m else None

        probe = _wait(probe_line, 120, what="the probe's actors")
        # package mode: the job imported the uploaded package, not the installed checkout
        assert "runtime_resources" in probe["mmotif_file"], probe["mmotif_file"]
        ports = c.node_ports()
        assert sorted(probe["nodes"]) == sorted(ports), "probe actors not on both nodes"

        for index, node in enumerate(probe["nodes"]):
            port, worker = ports[node], probe["workers"][index]
            other = probe["workers"][1 - index]

            def mine(text, name, worker=worker):
                return [(lab, v) for lab, v in _series(text, name) if lab.get("WorkerId") == worker]

            def exported(port=port, mine=mine):
                text = c.scrape(port)
                return text if all(mine(text, "ray_" + m.name) for m in METRICS) else None

            text = _wait(exported, 90, 2, f"every ray_mmotif_* metric on port {port}")
            for m in METRICS:
                for labels, value in mine(text, "ray_" + m.name):
                    assert value == 1000 + index, (m.name, labels, value)
                    for tag in m.tags:
                        assert labels[tag] == f"probe{index}"
            # the other node's actor reports to its own node's endpoint, not this one
            assert not any(lab.get("WorkerId") == other
                           for m in METRICS for lab, _ in _series(text, "ray_" + m.name))
    finally:
        r = c.cli("stop", job, "--address", c.address, "--wait", "30")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{job}: STOPPED"


@pytest.mark.slow
def test_job_commands_explain_address_and_token_errors(ray_cluster):
    c = ray_cluster
    r = c.cli("status", "nope", "--address", f"127.0.0.1:{c.gcs}")  # the GCS port, not HTTP
    assert r.returncode == 2
    assert f"127.0.0.1:{c.gcs}" in r.stderr and "8265" in r.stderr
    env = {**c.env, "RAY_AUTH_TOKEN": "0" * 64}
    r = c.cli("status", "nope", "--address", c.address, env=env)
    assert r.returncode == 2 and "RAY_AUTH_TOKEN" in r.stderr, r.stderr
    r = c.cli("status", "nope", "--address", c.address)
    assert r.returncode == 2 and "no job 'nope'" in r.stderr


def test_autoscaler_bundles_cover_the_plan_at_max_actors():
    plan = cl.ActorPlan(num_rollout_actors=1, num_annotators=1, learner_device="cuda")
    cfg = _cfg(actors={"num_actors": "auto", "max_actors": 4, "threads_per_actor": 2})
    bundles = cl.autoscaler_bundles(cfg, plan)
    assert bundles[0] == {"CPU": float(cl.LEARNER_CPUS), "GPU": 1.0}
    assert bundles[-4:] == [{"CPU": 2.0}] * 4
    assert len(bundles) == 1 + 1 + 1 + 4  # learner, annotator, reward trainer, rollout actors
    assert cl.autoscaler_bundles(_cfg(actors={"num_actors": "auto"}), plan) == []  # nothing asked
    assert cl.autoscaler_bundles(_cfg(actors={"num_actors": 2, "max_actors": 4}), plan) == []
    assert cl.new_rollout_actors(cfg, {"CPU": 20.0}, running=3) == 1  # grows up to max_actors only
