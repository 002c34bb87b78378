"""A real multi-node run without a shared disk, a worker lost as a spot node is, and one that
joins later.

Each node is a network namespace (its own loopback, ports and address on a bridge the test
creates: head 10.231.0.1, workers .2, .3) plus a mount namespace whose /tmp is a folder only
that node sees; Ray's temp dir, HOME and the run folder live there. The nodes share the
installed code (the image), nothing they write: the driver can only read what the head wrote,
and data reaches it by Ray calls. Ray's token travels in the environment, not in ~/.ray.

The run (rules annotator, instant): the learner, the annotator and the driver on the head, the
reward trainer and one rollout actor on the worker, one rollout actor on the head (custom
resources through `cluster.actor_resources`). Then every process of the worker is SIGKILLed and
its link removed; the run goes on with the head's rollout actor while Ray waits for a node for
the others; a fresh worker (new namespace, empty /tmp) joins and gets the reward trainer and
the rollout actor back. The outcomes are read from the head's run folder.

Needs root (namespaces, veths, mounts). Without root the test is skipped with that reason; as
root, a namespace that cannot be made fails it: it never passes without running the cluster.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmotif.contract import LABEL_FIRST, LABEL_SECOND

VENV_BIN = Path(sys.executable).parent
SUBNET = "10.231.0"
HEAD_IP = f"{SUBNET}.1"
GCS_PORT = 6379
DASHBOARD_PORT = 8265  # inside the head's namespace: no clash with anything on the machine
TOKEN = os.urandom(32).hex()
NODE_CPUS = 2  # head: learner + one rollout actor; worker: one rollout actor + the reward trainer


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


class Node:
    def __init__(self, name: str, ip: str, root: Path, link: str | None):
        self.name, self.ip, self.root, self.link = name, ip, root, link  # root: this node's /tmp
        self.raylet: subprocess.Popen | None = None

    @property
    def logs(self) -> Path:
        return self.root / "logs"


class NamespaceCluster:
    """Ray nodes in network + mount namespaces on one machine, joined by a bridge in the head's."""

    def __init__(self, root: Path):
        self.root, self.tag = root, f"mm{os.getpid() % 100000}"
        self.nodes: list[Node] = []
        self.processes: list[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "MMOTIF_CACHE"}
        self.env.update({
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": "/tmp/home",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN,
            # the GCS declares a silent node dead after ~3 s (default ~30 s)
            "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3",
        })

    # -- nodes -------------------------------------------------------------------------------
    def _new_node(self, role: str, ip: str, link: str | None) -> Node:
        name = f"{self.tag}{role}"
        _sh("ip", "netns", "add", name)
        node = Node(name, ip, self.root / role, link)
        self.nodes.append(node)
        node.logs.mkdir(parents=True)
        _sh("ip", "-n", name, "link", "set", "lo", "up")
        return node

    def start_head(self) -> Node:
        head = self._new_node("h", HEAD_IP, None)
        _sh("ip", "-n", head.name, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", head.name, "addr", "add", f"{HEAD_IP}/24", "dev", "br0")
        _sh("ip", "-n", head.name, "link", "set", "br0", "up")
        head.raylet = self.popen(head, [
            "ray", "start", "--head", "--port", str(GCS_PORT), "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(DASHBOARD_PORT),
            "--resources", json.dumps({"mmotif_head": 1, "rollout_slot": 1}),
            *self._node_args(head)], "raylet")
        return head

    def start_worker(self, index: int) -> Node:
        head = self.nodes[0]
        link = f"{self.tag}v{index}"
        worker = self._new_node(f"w{index}", f"{SUBNET}.{index + 1}", link)
        _sh("ip", "link", "add", "name", link, "netns", head.name, "type", "veth",
            "peer", "name", "eth0", "netns", worker.name)
        _sh("ip", "-n", head.name, "link", "set", link, "master", "br0", "up")
        _sh("ip", "-n", worker.name, "addr", "add", f"{worker.ip}/24", "dev", "eth0")
        _sh("ip", "-n", worker.name, "link", "set", "eth0", "up")
        worker.raylet = self.popen(worker, [
            "ray", "start", "--address", f"{HEAD_IP}:{GCS_PORT}",
            "--resources", json.dumps({"spot": 1, "rollout_slot": 1}), *self._node_args(worker)], "raylet")
        return worker

    def _node_args(self, node: Node) -> list[str]:
        return ["--node-ip-address", node.ip, "--num-cpus", str(NODE_CPUS), "--num-gpus", "0",
                "--temp-dir", "/tmp/ray", "--object-store-memory", str(100 * 1024 * 1024),
                "--disable-usage-stats", "--block"]

    def popen(self, node: Node, argv: list[str], log_name: str, env: dict | None = None) -> subprocess.Popen:
        """`argv` inside `node`: its network namespace, and a mount namespace where /tmp is
        the node's own folder (the same folder for every process of that node)."""
        cmd = ["ip", "netns", "exec", node.name, "unshare", "--mount", "--propagation", "private",
               "sh", "-c", 'mount --bind "$0" /tmp && mkdir -p /tmp/home && exec "$@"', str(node.root), *argv]
        out = open(node.logs / f"{log_name}.log", "w")
        p = subprocess.Popen(cmd, env=env or self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(p)
        return p

    def kill(self, node: Node) -> None:
        """As a spot VM goes: every process of the node killed at once, then its link cut."""
        for _ in range(20):
            pids = _sh("ip", "netns", "pids", node.name, check=False).stdout.split()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        if node.link:
            _sh("ip", "-n", self.nodes[0].name, "link", "del", node.link, check=False)

    def close(self) -> None:
        for node in reversed(self.nodes):
            self.kill(node)
            _sh("ip", "netns", "del", node.name, check=False)
        for p in self.processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    # -- the head's view of the cluster (the state API, from inside the head's namespace) ---
    def state(self, path: str) -> list[dict]:
        script = ("import json, os, sys, requests; r = requests.get(sys.argv[1], timeout=10, headers="
                  "{'Authorization': 'Bearer ' + os.environ['RAY_AUTH_TOKEN']}); r.raise_for_status(); "
                  "print(json.dumps(r.json()['data']['result']['result']))")
        url = f"http://127.0.0.1:{DASHBOARD_PORT}{path}"
        r = subprocess.run(["ip", "netns", "exec", self.nodes[0].name, sys.executable, "-c", script, url],
                           capture_output=True, text=True, env=self.env, timeout=30)
        return json.loads(r.stdout) if r.returncode == 0 else []

    def alive_nodes(self) -> dict[str, str]:
        """node id -> IP of each alive node."""
        return {n["node_id"]: n["node_ip"] for n in self.state("/api/v0/nodes?limit=100&detail=1")
                if n["state"] == "ALIVE"}

    def alive_actors(self) -> dict[str, set[str]]:
        """actor class -> IPs of the nodes where one of its actors is alive."""
        ips = self.alive_nodes()
        out: dict[str, set[str]] = {}
        for a in self.state("/api/v0/actors?limit=1000&detail=1"):
            if a["state"] == "ALIVE":
                out.setdefault(a["class_name"], set()).add(ips.get(a["node_id"], "?"))
        return out


def _require_namespaces() -> None:
    if os.geteuid() != 0:
        pytest.skip("the multi-node test needs root: it creates network and mount namespaces "
                    "(ip netns, veth, unshare --mount); run the slow suite as root to check multi-node")
    probe = f"mmprobe{os.getpid() % 100000}"
    r = _sh("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        pytest.fail(f"running as root but cannot create a network namespace: {r.stderr.strip()}")
    try:
        r = _sh("ip", "netns", "exec", probe, "unshare", "--mount", "--propagation", "private", "true", check=False)
        if r.returncode != 0:
            pytest.fail(f"running as root but cannot create a mount namespace: {r.stderr.strip()}")
    finally:
        _sh("ip", "netns", "del", probe, check=False)


# -- the run -------------------------------------------------------------------------------
RUN_CONFIG = {
    "preset": "local",
    "time_limit_s": 200,  # a backstop: the test stops the run with SIGINT once it has seen enough
    "checkpoint_every_steps": 4096,
    "annotator": {"backend": "rules", "mode": "pointwise", "num_annotators": 1, "pairs_per_call": 16},
    "reward": {"retrain_every_labels": 100, "epochs": 1, "min_steps": 5},
    "actors": {"num_actors": 2, "envs_per_actor": 4},
    "learner": {"batch_size": 128, "rollout": 32},
    "evaluation": {"tasks": []},
    "cluster": {"address": f"{HEAD_IP}:{GCS_PORT}", "actor_resources": {
        "learner": {"mmotif_head": 0.01}, "annotator": {"mmotif_head": 0.01},
        "rollout": {"rollout_slot": 1},  # one per node: the head keeps rolling out when the worker goes
        "reward_trainer": {"spot": 0.01},
    }},
    "paths": {"run_dir": "/tmp/run"},  # the head's own /tmp
}


def _metrics(run_dir: Path) -> list[dict]:
    rows = []
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line the driver is writing now
            pass
    return rows


def _learner_rows(run_dir: Path) -> list[dict]:
    return [r for r in _metrics(run_dir) if "env_steps_total" in r]


def _progress(run_dir: Path) -> tuple[int, int]:
    """(env steps, reward-model version the learner scores with), from the last learner record."""
    rows = _learner_rows(run_dir)
    return (rows[-1]["env_steps_total"], rows[-1]["reward_model_version"]) if rows else (0, -1)


def _store_rows(run_dir: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{run_dir / 'preferences.sqlite'}?mode=ro", uri=True) as db:
        return db.execute("SELECT skill, pair_key, label FROM preferences").fetchall()


def _wait(what: str, until: float, check, driver: subprocess.Popen, every_s: float = 1.0):
    while True:
        value = check()
        if value:
            return value
        if driver.poll() is not None:
            raise AssertionError(f"the driver exited ({driver.returncode}) while waiting for {what}")
        if time.monotonic() > until:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every_s)


def _summary(log: Path) -> dict:
    """The JSON summary `mmotif run` prints last (Ray may log after it)."""
    text = log.read_text()
    return json.JSONDecoder().raw_decode(text[text.rindex("\n{") + 1:])[0]


def test_actor_resources_pin_each_role():
    from mmotif.config import ConfigError, load_config
    from mmotif.runtime.cluster import ActorPlan, autoscaler_bundles, role_options, rollout_actor_options

    pins = RUN_CONFIG["cluster"]["actor_resources"]
    cfg = load_config(preset_name="local", overrides={
        "cluster": {"actor_resources": pins}, "actors": {"num_actors": "auto", "max_actors": 2}})
    assert role_options(cfg, "reward_trainer") == {"resources": {"spot": 0.01}}
    assert rollout_actor_options(cfg)["resources"] == {"rollout_slot": 1}
    assert role_options(load_config(preset_name="local"), "learner") == {}
    bundles = autoscaler_bundles(cfg, ActorPlan(2, 1, "cpu"))  # the autoscaler learns which node types
    assert bundles[0]["mmotif_head"] == 0.01 and bundles[-1]["rollout_slot"] == 1
    assert {"CPU": 0.5, "spot": 0.01} in bundles
    for bad in ({"rollout": {"CPU": 1}}, {"rollout": {"spot": 0}}, {"trainer": {"spot": 1}}):
        with pytest.raises(ConfigError, match="actor_resources"):
            load_config(preset_name="local", overrides={"cluster": {"actor_resources": bad}})


@pytest.mark.slow
def test_run_survives_a_lost_worker_and_uses_a_worker_that_joins(tmp_path):
    _require_namespaces()
    cluster = NamespaceCluster(tmp_path)
    try:
        _run_kill_and_join(cluster)
    except BaseException:
        for log in sorted(tmp_path.glob("*/logs/*.log")):
            print(f"===== {log.relative_to(tmp_path)}\n{log.read_text()[-3000:]}")
        raise
    finally:
        cluster.close()


def _run_kill_and_join(cluster: NamespaceCluster) -> None:
    t_start = time.monotonic()
    deadline = t_start + 240  # ~100 s on an idle 2-core machine; slower beside other work
    head, worker = cluster.start_head(), cluster.start_worker(1)
    _wait("two nodes", deadline, lambda: len(cluster.alive_nodes()) == 2, head.raylet)
    (head.root / "run.yaml").write_text(yaml.safe_dump(RUN_CONFIG))
    cache = os.environ.get("MMOTIF_CACHE", str(Path.home() / ".cache" / "mmotif"))  # the head's own
    driver = cluster.popen(head, ["mmotif", "run", "--config", "/tmp/run.yaml"], "driver",
                           env={**cluster.env, "MMOTIF_CACHE": cache})
    run = Run(head.root / "run", driver, deadline)

    at_kill = _whole_loop_on_two_nodes(cluster, run, head, worker)
    at_join = _lose_the_worker(cluster, run, worker, at_kill)
    joiner = cluster.start_worker(2)
    at_join["time"] = time.time()
    _the_new_worker_is_used(cluster, run, head, joiner, at_join)
    wall_s = time.monotonic() - t_start
    driver.send_signal(signal.SIGINT)  # stops cleanly with a last checkpoint
    assert driver.wait(timeout=60) == 0, (head.logs / "driver.log").read_text()[-3000:]
    summary = _summary(head.logs / "driver.log")
    numbers = {"at_kill": {k: at_kill[k] for k in ("env_steps", "version")}, "at_join": at_join,
               "env_steps_at_end": summary["env_steps"], "versions": summary["reward_model_versions"]}
    print(json.dumps({"wall_s_to_stop": round(wall_s, 1), **numbers}))
    _check_outcomes(run, summary, at_kill, at_join)
    for node in cluster.nodes[1:]:  # one owner per file: no node but the head holds a run file
        strays = [p for p in node.root.rglob("*") if p.name in {"preferences.sqlite", "metrics.jsonl", "manifest.json"}]
        assert not strays, f"{node.name} wrote run files: {strays}"


class Run:
    def __init__(self, run_dir: Path, driver: subprocess.Popen, deadline: float):
        self.dir, self.driver, self.deadline = run_dir, driver, deadline

    def wait(self, what: str, check):
        return _wait(what, self.deadline, check, self.driver)

    def progress(self) -> tuple[int, int]:
        return _progress(self.dir)


def _whole_loop_on_two_nodes(cluster: NamespaceCluster, run: Run, head: Node, worker: Node) -> dict:
    """Rollouts on both nodes, labels, a reward model retrained on the worker and in use."""
    run.wait("a reward model in the learner", lambda: run.progress()[1] >= 1)
    placed = cluster.alive_actors()
    assert placed.get("RewardTrainerActor") == {worker.ip}, placed
    assert placed.get("RolloutActor") == {head.ip, worker.ip}, placed
    assert placed.get("LearnerActor") == {head.ip} and placed.get("AnnotatorActor") == {head.ip}, placed
    steps, version = run.progress()
    return {"env_steps": steps, "version": version, "labels": set(_store_rows(run.dir)), "time": time.time()}


def _lose_the_worker(cluster: NamespaceCluster, run: Run, worker: Node, at_kill: dict) -> dict:
    """The worker goes as a spot VM does; the run goes on with the head's rollout actor."""
    cluster.kill(worker)
    at_kill["time"] = time.time()
    run.wait("the driver to see the rollout actor die",
             lambda: any("actor_restarts_total/rollout" in r for r in _metrics(run.dir)))
    batch = RUN_CONFIG["learner"]["batch_size"]
    run.wait("env steps with the worker gone", lambda: run.progress()[0] >= at_kill["env_steps"] + 4 * batch)
    steps, version = run.progress()
    return {"env_steps": steps, "version": version}


def _the_new_worker_is_used(cluster: NamespaceCluster, run: Run, head: Node, joiner: Node, at_join: dict) -> None:
    """A fresh worker joins: the reward trainer and the rollout actor come back on it."""
    run.wait("the reward trainer on the new worker",
             lambda: cluster.alive_actors().get("RewardTrainerActor") == {joiner.ip})
    run.wait("a newer reward model in the learner", lambda: run.progress()[1] > at_join["version"])
    assert cluster.alive_actors().get("RolloutActor") == {head.ip, joiner.ip}
    joiner_id = next(i for i, ip in cluster.alive_nodes().items() if ip == joiner.ip)
    tasks = f"/api/v0/tasks?limit=1000&filter_keys=node_id&filter_predicates=%3D&filter_values={joiner_id}"
    run.wait("a rollout finished on the new worker", lambda: any(
        t["name"] == "RolloutActor.collect" and t["state"] == "FINISHED" for t in cluster.state(tasks)))


def _check_outcomes(run: Run, summary: dict, at_kill: dict, at_join: dict) -> None:
    """From the head's run folder: steps and hot-swapped versions after the kill and the join,
    every label kept once, informative labels, a last checkpoint that agrees."""
    learner = _learner_rows(run.dir)
    after_kill = [r for r in learner if r["time"] > at_kill["time"]]
    after_join = [r for r in learner if r["time"] > at_join["time"]]
    assert summary["status"] == "stopped by Ctrl-C"
    assert after_kill and max(r["env_steps_total"] for r in after_kill) > at_kill["env_steps"]
    assert max(r["env_steps_total"] for r in after_join) > at_join["env_steps"]
    assert max(r["reward_model_version"] for r in after_join) > at_join["version"], "no hot swap after the join"
    versions = summary["reward_model_versions"]
    assert versions == sorted(versions) and versions[-1] > at_join["version"]
    published = sorted(p.name for p in (run.dir / "rewards").iterdir() if p.name.startswith("v"))
    assert len(published) == len(versions), "each version published once, by the driver on the head"
    rows = _store_rows(run.dir)
    assert at_kill["labels"] <= set(rows), "a label stored before the kill was lost"
    assert len({(s, k) for s, k, _ in rows}) == len(rows), "a label was stored twice"
    assert sum(label in (LABEL_FIRST, LABEL_SECOND) for _, _, label in rows) > 0, "no informative label"
    latest = (run.dir / "checkpoints" / "LATEST").read_text().strip()
    state = json.loads((run.dir / "checkpoints" / latest / "driver.json").read_text())
    assert state["env_steps"] == summary["env_steps"] > at_join["env_steps"]
    assert state["labels"] == len(rows) and state["reward_versions"] == versions
