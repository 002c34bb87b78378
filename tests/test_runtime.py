"""The actor-learner on real Ray on this machine (annotation off; see test_pipeline for the
LLM side)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import ray
import torch

from mmotif.config import load_config
from mmotif.learners.learner import Learner
from mmotif.rewards.versions import RewardModelSet, SkillReward
from mmotif.rewards.stats import RewardStats
from mmotif.checkpoint import CheckpointError, latest_checkpoint
from mmotif.runtime.resume import load_checkpoint
from mmotif.runtime.driver import Driver
from mmotif.runtime.shells import LearnerActor, RolloutActor
from mmotif.tasks import get_task, reference_policy_source

pytestmark = pytest.mark.slow


def local_cfg(tmp_path, **extra):
    overrides = {
        "annotator": {"num_annotators": 0},
        "actors": {"num_actors": 1, "envs_per_actor": 8},
        "learner": {"batch_size": 256, "rollout": 32},
        "checkpoint_every_steps": 2048,
        "paths": {"run_dir": str(tmp_path / "run")},
        # the end-of-run evaluation (~15 s on 2 cores) is test_short_run's subject, not the others'
        "evaluation": {"tasks": []},
    }
    for k, v in extra.items():
        overrides[k] = {**overrides.get(k, {}), **v} if isinstance(v, dict) else v
    return load_config(preset_name="local", overrides=overrides)


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_run_trains_and_checkpoints(tmp_path, ray_local):
    cfg = local_cfg(tmp_path, time_limit_s=25, evaluation={"tasks": ["gnomish"]})
    run_dir = tmp_path / "run"
    plan = run_dir / "plans" / "gnomish.py"  # as `mmotif plan --task gnomish --out <run>/plans` writes it
    plan.parent.mkdir(parents=True)
    plan.write_text(reference_policy_source(get_task("gnomish")))
    summary = Driver(cfg).run()
    rows = [r for r in read_metrics(run_dir) if "learner_loss/loss" in r]
    assert len(rows) >= 3
    assert all(np.isfinite(r["learner_loss/loss"]) for r in rows)
    assert rows[-1]["policy_version"] > rows[0]["policy_version"]
    assert summary["env_steps"] >= 3 * 256
    learner_state, driver_state = load_checkpoint(run_dir, cfg)
    fresh = Learner(cfg).state()["net"]
    changed = [k for k in fresh if not torch.equal(fresh[k], learner_state["net"][k])]
    assert changed, "training changed no weight"
    assert driver_state["env_steps"] == learner_state["env_steps"] > 0
    assert (run_dir / "report" / "competence.png").is_file() and (run_dir / "competence_random.json").is_file()
    evaluation = summary["evaluation"]["gnomish"]  # the end-of-run evaluation used the run's plan
    assert evaluation["policy"] == str(plan) and evaluation["episodes"] == cfg.evaluation.episodes
    assert 0.0 <= evaluation["interval95"]["proxy"]["low"] <= evaluation["interval95"]["proxy"]["high"] <= 1.0


def test_reward_version_published_mid_run_is_used(tmp_path, ray_local):
    cfg = local_cfg(tmp_path)
    data = cfg.model_dump(mode="json")
    learner = LearnerActor.remote(data)
    actor = RolloutActor.remote(data, 0, 1)
    actor.set_weights.remote(learner.weights.remote())
    stats = ray.get(learner.add.remote(actor.collect.remote()[0]))
    assert stats["reward_model_version"] == -1 and stats["intrinsic_reward_mean"] == 0.0
    # A version whose every skill finds every moment 10 sigmas above its threshold.
    names = [s.name for s in cfg.skills]
    model = RewardModelSet.constant(names)
    entries = [SkillReward(name=n, state_dict=None,
                           stats=RewardStats(mean=-10.0, std=1.0, threshold_quantile=0.5, threshold=0.0,
                                             quantiles=[0.0] * 19, n_unique=1)) for n in names]
    update = RewardModelSet(entries, version=7).to_update()
    assert ray.get(learner.set_reward_models.remote(update)) == 7
    stats = ray.get(learner.add.remote(actor.collect.remote()[0]))
    assert stats["reward_model_version"] == 7 and stats["intrinsic_reward_mean"] > 0


def test_killed_rollout_actor_is_restarted_and_training_goes_on(tmp_path, ray_local):
    cfg = local_cfg(tmp_path, time_limit_s=40, actors={"num_actors": 2})
    driver = Driver(cfg)
    seen = {}

    def kill_one_actor_then_ask_both():
        while driver.counters.env_steps < 1024:
            time.sleep(0.2)
        seen["steps_at_kill"] = driver.counters.env_steps
        ray.kill(driver.actors[0], no_restart=False)
        while driver.counters.actor_restarts < 1 or driver.actors[0] in driver._awaiting:
            time.sleep(0.2)
        # mid-run, both actor slots answer again (the driver releases them when the run ends)
        seen["node_ids"] = ray.get([a.node_id.remote() for a in driver.actors], timeout=60)
        seen["restarts"] = driver.counters.actor_restarts
        deadline = time.time() + 30  # the time limit stays the backstop
        while driver.counters.env_steps <= seen["steps_at_kill"] + 2048 and time.time() < deadline:
            time.sleep(0.2)
        driver.stop()

    killer = threading.Thread(target=kill_one_actor_then_ask_both, daemon=True)
    killer.start()
    summary = driver.run()
    killer.join(timeout=1)
    assert seen["restarts"] == 1, "one kill is one restart"
    assert summary["env_steps"] > seen["steps_at_kill"] + 1024
    assert len(seen["node_ids"]) == 2


def test_driver_killed_then_resumed_continues_from_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(local_cfg(tmp_path).to_yaml())
    cmd = [sys.executable, "-m", "mmotif.cli", "run", "--config", str(config), "--time-limit", "120"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 150
        while latest_checkpoint(run_dir) is None and time.time() < deadline:
            time.sleep(0.5)
        assert latest_checkpoint(run_dir) is not None, "no checkpoint before the kill"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver (and the Ray it started) die without a word
        proc.wait()
    cfg = load_config(config)
    saved_learner, saved_driver = load_checkpoint(run_dir, cfg)
    # The learner that --resume builds holds exactly the checkpointed state.
    learner = Learner(cfg)
    learner.load_state(saved_learner)
    state = learner.state()
    assert all(torch.equal(state["net"][k], saved_learner["net"][k]) for k in saved_learner["net"])
    opt_a, opt_b = state["optimizer"]["state"], saved_learner["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    assert all(torch.equal(opt_a[i]["exp_avg"], opt_b[i]["exp_avg"]) for i in opt_a)
    assert torch.equal(torch.rand(3), (torch.set_rng_state(saved_learner["rng"]["torch"]), torch.rand(3))[1])
    # ... and the resumed run continues from there.
    out = subprocess.run(cmd[:-1] + ["15", "--resume"], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [r for r in read_metrics(run_dir) if "policy_version" in r]
    resumed = [r for r in rows if r["step"] > saved_driver["env_steps"]]
    assert resumed and min(r["policy_version"] for r in resumed) > saved_learner["policy_version"]


def test_mismatched_checkpoint_is_refused(tmp_path, ray_local):
    cfg = local_cfg(tmp_path, time_limit_s=8)
    Driver(cfg).run()
    other = load_config(preset_name="local", overrides={
        "paths": {"run_dir": str(tmp_path / "run")}, "learner": {"network": {"core_hidden": 64}}})
    with pytest.raises(CheckpointError, match="different run config"):
        load_checkpoint(tmp_path / "run", other)
    (latest_checkpoint(tmp_path / "run") / "learner.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "run", cfg)


def test_the_loop_waits_for_starting_actors_instead_of_spinning(tmp_path, ray_local):
    """With no rollout in flight (every actor still starting), the driver's wait blocks on
    the actors' ready pings; it used to return at once (`ray.wait([])`) and spin a core."""
    @ray.remote
    def slow_ping():
        time.sleep(3.0)
        return True

    driver = Driver(local_cfg(tmp_path))
    driver._pending, driver._awaiting = {}, {"actor": slow_ping.remote()}
    started = time.time()
    assert driver._wait_for_rollout_or_ping(timeout=1.0) == []
    assert time.time() - started >= 0.9
    assert driver._wait_for_rollout_or_ping(timeout=10.0) == []  # the ping, not a rollout
    assert time.time() - started < 9.0, "woke when the ping answered"
