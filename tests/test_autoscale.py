"""A run with `actors.num_actors: auto` uses CPUs that join the cluster mid-run.

Real Ray, several raylets on this machine (`ray.cluster_utils.Cluster`): the run starts on
a head node with room for the learner and one rollout actor; a second node joins; the
driver adds a rollout actor there and it produces trajectories.
"""

import threading
import time

import pytest
import ray
from ray.cluster_utils import Cluster

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
        "time_limit_s": 45,
        "paths": {"run_dir": str(tmp_path / "run")},
    })
    driver = Driver(cfg)
    result = {}
    run = threading.Thread(target=lambda: result.update(summary=driver.run()), daemon=True)
    run.start()  # the main thread adds the node: Ray starts raylets from the main thread only
    deadline = time.time() + 60
    while (not getattr(driver, "actors", None) or driver._awaiting or driver.counters.env_steps < 512) \
            and time.time() < deadline:
        time.sleep(0.5)
    head = ray.get_runtime_context().get_node_id()
    assert len(driver.actors) == 1
    cluster.add_node(num_cpus=1)
    deadline = time.time() + 45
    while len(driver.actors) == 1 and time.time() < deadline:
        time.sleep(0.5)
    assert len(driver.actors) == 2, "the joined node's CPU should become a rollout actor"
    new = driver.actors[-1]
    assert ray.get(new.node_id.remote(), timeout=60) != head
    while ray.get(new.env_steps.remote(), timeout=30) == 0 and time.time() < deadline + 30:
        time.sleep(0.5)
    assert ray.get(new.env_steps.remote(), timeout=30) > 0, "the new actor should produce trajectories"
    run.join(timeout=120)
    assert result["summary"]["env_steps"] > 0
