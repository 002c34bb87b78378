"""Injected faults on real Ray: an env process that segfaults, an env that hangs."""

import pytest
import ray

from test_runtime import local_cfg, read_metrics

from mmotif.runtime.driver import Driver

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_local():
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_segfaulting_and_hanging_rollout_actors_are_restarted(tmp_path, ray_local):
    cfg = local_cfg(
        tmp_path, time_limit_s=60,
        actors={"num_actors": 2, "rollout_timeout_s": 8},
        faults={"crash_rollout_at_steps": [512], "stall_rollout_at_steps": [768], "stall_seconds": 600},
    )
    driver = Driver(cfg)
    summary = driver.run()
    assert driver.counters.actor_restarts >= 2, "the segfault and the hang should each cost a restart"
    restarts = [r["actor_restarts_total/rollout"] for r in read_metrics(tmp_path / "run")
                if "actor_restarts_total/rollout" in r]
    assert restarts and restarts[-1] == driver.counters.actor_restarts
    assert summary["env_steps"] > 4096, "training went on around the faults"
