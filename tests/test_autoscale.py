"""A run with `actors.num_actors: auto` uses CPUs that join the cluster mid-run.

Real Ray, several raylets on this machine (`ray.cluster_utils.Cluster`): the run starts on
a head node with room for the learner and one rollout actor; a second node joins; the
driver adds a rollout actor there and it produces trajectories.
"""

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import AutoscalingCluster, Cluster
from sessions import end_sessions, free_ports, run_in_own_session

from mmotif.config import load_config
from mmotif.runtime import driver as driver_module
from mmotif.runtime.driver import Driver

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    yield c
    ray.shutdown()
    c.shutdown()


def test_cpus_added_mid_run_become_rollout_actors(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(driver_module, "GROWTH_CHECK_S", 1.0)
    cfg = load_config(preset_name="local", overrides={
        "cluster": {"address": cluster.address},
        "annotator": {"num_annotators": 0},
        "actors": {"num_actors": "auto", "envs_per_actor": 4},
        "learner": {"batch_size": 128, "rollout": 16},
        "evaluation": {"tasks": []},
        "time_limit_s": 300,  # a backstop: the test stops the run once the new actor has played
        "paths": {"run_dir": str(tmp_path / "run")},
    })
    driver = Driver(cfg)
    result = {}
    run = threading.Thread(target=lambda: result.update(summary=driver.run()), daemon=True)
    run.start()  # the main thread adds the node: Ray starts raylets from the main thread only
    deadline = time.time() + 150
    while (not getattr(driver, "actors", None) or driver._awaiting or driver.counters.env_steps < 512) \
            and time.time() < deadline:
        time.sleep(0.5)
    head = ray.get_runtime_context().get_node_id()
    assert len(driver.actors) == 1
    cluster.add_node(num_cpus=1)
    deadline = time.time() + 120
    while len(driver.actors) == 1 and time.time() < deadline:
        time.sleep(0.5)
    assert len(driver.actors) == 2, "the joined node's CPU should become a rollout actor"
    new = driver.actors[-1]
    assert ray.get(new.node_id.remote(), timeout=60) != head
    while ray.get(new.env_steps.remote(), timeout=30) == 0 and time.time() < deadline + 30:
        time.sleep(0.5)
    assert ray.get(new.env_steps.remote(), timeout=30) > 0, "the new actor should produce trajectories"
    driver.stop()
    run.join(timeout=120)
    assert result["summary"]["env_steps"] > 0


class FakeAutoscalingCluster(AutoscalingCluster):
    """Ray's fake multi-node autoscaler. The PyPI wheel lacks the base config it reads
    (fake_multi_node/example.yaml), so the fields that provider needs are given here.

    Ray's own `start` and `shutdown` run `ray stop --force`, which kills every Ray instance
    on the machine (the developer's too). This one runs its head on a free port in a session
    of its own, whose leader (a shell that then sleeps) keeps the session id taken, and
    `shutdown` ends exactly that session: the head, its autoscaler and the worker nodes the
    autoscaler launched (in-process `Node`s of the autoscaler's monitor)."""

    def __init__(self, head_resources, worker_node_types):
        self.port = free_ports(1)[0]
        self.root = Path(tempfile.mkdtemp(prefix="mmfa", dir="/tmp"))  # short: socket paths
        super().__init__(head_resources, worker_node_types)
        self.address = f"{ray.util.get_node_ip_address()}:{self.port}"  # the IP Ray's nodes pick
        self._config["provider"]["gcs_address"] = self.address  # where launched nodes join
        self.session = None

    def start(self, _system_config=None, override_env=None):
        config = self.root / "autoscaling.json"
        config.write_text(json.dumps(self._config))
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--port", str(self.port),
               f"--autoscaling-config={config}", f"--temp-dir={self.root / 'ray'}",
               f"--num-cpus={self._head_resources['CPU']}", "--include-dashboard", "false"]
        # The head authenticates as this process's driver will. A local `ray.init()` earlier in
        # the process (another test's) leaves RAY_AUTH_MODE=token in os.environ, and a driver in
        # token mode refuses a token-less cluster's calls ("Missing authorization header") and
        # places no actor; otherwise the driver runs without a token, so the head must too.
        mode = "token" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else "disabled"
        env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1", "RAY_AUTH_MODE": mode}
        self.session = run_in_own_session(cmd, env, self.root / "start")

    def shutdown(self):
        end_sessions([self.session])
        shutil.rmtree(self.root, ignore_errors=True)

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **extra):
        return {
            "cluster_name": "mmotif-fake", "max_workers": 8, "upscaling_speed": 1.0,
            "idle_timeout_minutes": 10, "head_node_type": "ray.head.default",
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True},
            "available_node_types": {
                **worker_node_types,
                "ray.head.default": {"resources": head_resources, "node_config": {}, "max_workers": 0},
            },
            "auth": {"ssh_user": "nobody"}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
            "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            **extra,
        }


def test_max_actors_asks_the_autoscaler_and_the_run_grows_onto_the_new_nodes(tmp_path, monkeypatch):
    """Ray's fake autoscaler (real raylets on this machine, launched on demand): a head with
    room for the learner and one rollout actor, worker nodes of 1 CPU from zero. The driver's
    `request_resources` for `actors.max_actors` makes the autoscaler launch workers, and the
    run puts rollout actors on them."""
    monkeypatch.setattr(driver_module, "GROWTH_CHECK_S", 1.0)
    fake = FakeAutoscalingCluster(
        head_resources={"CPU": 2},
        worker_node_types={"cpu_worker": {"resources": {"CPU": 1}, "node_config": {},
                                          "min_workers": 0, "max_workers": 2}})
    fake.start()
    try:
        cfg = load_config(preset_name="local", overrides={
            "cluster": {"address": fake.address},
            "annotator": {"num_annotators": 0},
            "actors": {"num_actors": "auto", "max_actors": 3, "envs_per_actor": 2},
            "learner": {"batch_size": 64, "rollout": 16},
            "evaluation": {"tasks": []},
            # a backstop: the test stops the run itself once it has seen the growth, and
            # starting two raylets on a busy 2-core machine has taken over a minute
            "time_limit_s": 300,
            "paths": {"run_dir": str(tmp_path / "run")},
        })
        driver = Driver(cfg)
        result = {}
        run = threading.Thread(target=lambda: result.update(summary=driver.run()), daemon=True)
        run.start()
        deadline = time.time() + 240
        while len(getattr(driver, "actors", [])) < 3 and time.time() < deadline:
            time.sleep(1.0)
        workers = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU") == 1.0]
        assert workers, "the autoscaler launched no worker node"
        assert len(driver.actors) == 3, f"{len(driver.actors)} rollout actors; max_actors is 3"
        deadline = time.time() + 60
        while driver.counters.env_steps == 0 and time.time() < deadline:
            time.sleep(1.0)
        driver.stop()
        run.join(timeout=150)
        assert result["summary"]["env_steps"] > 0
    finally:
        ray.shutdown()
        fake.shutdown()
