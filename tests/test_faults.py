"""Injected faults on real Ray: an env process that segfaults, an env that hangs, a NaN
reward, an annotator actor killed mid-run."""

import json
import logging
import socket
import sqlite3
import threading
import time

import pytest
import ray
import torch

from test_runtime import local_cfg, read_metrics

from mmotif.runtime.resume import load_checkpoint
from mmotif.runtime.driver import Driver, TrainingStopped

pytestmark = pytest.mark.slow


def stop_when(driver, done, within_s: float) -> None:
    """Stop the run (`Driver.stop`) as soon as `done()` holds, or after `within_s`; the run's
    time limit stays the backstop. Runs only as long as what is under test needs."""
    def watch():
        deadline = time.time() + within_s
        while time.time() < deadline and not done():
            time.sleep(0.5)
        driver.stop()

    threading.Thread(target=watch, daemon=True).start()


def test_segfaulting_and_hanging_rollout_actors_are_restarted(tmp_path, ray_local):
    cfg = local_cfg(
        tmp_path, time_limit_s=150,
        actors={"num_actors": 2, "rollout_timeout_s": 8},
        faults={"crash_rollout_at_steps": [512], "stall_rollout_at_steps": [768], "stall_seconds": 600},
    )
    driver = Driver(cfg)
    stop_when(driver, lambda: driver.counters.actor_restarts >= 2 and driver.counters.env_steps > 6144, 145)
    summary = driver.run()
    assert driver.counters.actor_restarts >= 2, "the segfault and the hang should each cost a restart"
    restarts = [r["actor_restarts_total/rollout"] for r in read_metrics(tmp_path / "run")
                if "actor_restarts_total/rollout" in r]
    assert restarts and restarts[-1] == driver.counters.actor_restarts
    assert summary["env_steps"] > 4096, "training went on around the faults"


def test_nan_reward_stops_learning_with_a_good_checkpoint_and_names_the_tensor(tmp_path, ray_local):
    cfg = local_cfg(tmp_path, time_limit_s=120, faults={"nan_reward_at_update": 3})
    with pytest.raises(TrainingStopped, match=r"batch\['rewards'\] contains NaN/Inf"):
        Driver(cfg).run()
    learner_state, _ = load_checkpoint(tmp_path / "run", cfg)
    assert learner_state["updates"] == 3, "the checkpoint is the state before the poisoned batch"
    assert all(torch.isfinite(v).all() for v in learner_state["net"].values())


def test_killed_annotator_is_restarted_and_no_committed_label_is_lost(tmp_path, ray_local):
    # zero-shot prompts: the restarted engine labels again within seconds (what is under test)
    cfg = local_cfg(tmp_path, time_limit_s=150, annotator={"num_annotators": 1, "backend": "embedded",
                                                          "model": "smollm2-135m", "pairs_per_call": 8,
                                                          "few_shot": False})
    driver = Driver(cfg)
    seen = {}

    def kill_annotator_after_some_labels():
        while driver.counters.labels < 16:
            time.sleep(0.5)
        seen["keys"], _ = store_keys(tmp_path / "run" / "preferences.sqlite")
        ray.kill(driver.annotators[0], no_restart=False)
        seen["labels_at_kill"] = driver.counters.labels

    threading.Thread(target=kill_annotator_after_some_labels, daemon=True).start()
    stop_when(driver, lambda: driver.counters.annotator_restarts >= 1
              and driver.counters.labels > seen.get("labels_at_kill", float("inf")) + 8, 145)
    driver.run()
    assert driver.counters.annotator_restarts == 1, "one kill, one restart"
    after = store_keys(tmp_path / "run" / "preferences.sqlite")
    assert seen["keys"] <= after[0], "a label committed before the kill was lost"
    assert after[1] == len(after[0]), "a label was stored twice"
    assert driver.counters.labels > seen["labels_at_kill"], "labelling went on after the restart"
    rows = [r["actor_restarts_total/annotator"] for r in read_metrics(tmp_path / "run")
            if "actor_restarts_total/annotator" in r]
    assert rows and rows[-1] == driver.counters.annotator_restarts


def test_killed_reward_trainer_is_restarted_refilled_and_publishes_again(tmp_path, ray_local):
    """The trainer holds no file: after a kill it restarts empty, the driver (the store's
    owner) refills it, and a later version is still published and used."""
    cfg = local_cfg(tmp_path, time_limit_s=150, annotator={"num_annotators": 1, "backend": "rules",
                                                          "mode": "pointwise", "pairs_per_call": 64},
                    reward={"retrain_every_labels": 100, "epochs": 1, "min_steps": 5})
    driver = Driver(cfg)
    seen = {}

    def kill_trainer_after_the_first_version():
        while not driver.counters.reward_versions:
            time.sleep(0.5)
        seen["versions"] = list(driver.counters.reward_versions)
        seen["rows_stored"] = driver.store.cursor()
        ray.kill(driver.reward_trainer, no_restart=False)

    def newest_manifest():
        done = sorted((tmp_path / "run" / "rewards").glob("v[0-9]*/manifest.json"))
        return json.loads(done[-1].read_text()) if done else {"extra": {"labels_in_store": -1}}

    threading.Thread(target=kill_trainer_after_the_first_version, daemon=True).start()
    stop_when(driver, lambda: "rows_stored" in seen and driver.counters.reward_trainer_refills >= 1
              and newest_manifest()["extra"]["labels_in_store"] >= seen["rows_stored"], 145)
    summary = driver.run()
    assert summary["status"] in ("finished", "stopped by Driver.stop()")
    assert driver.counters.reward_trainer_restarts >= 1, "the kill was not noticed"
    assert driver.counters.reward_trainer_refills == 1, "the restarted trainer was not refilled once"
    assert len(driver.counters.reward_versions) > len(seen["versions"]), "no version after the restart"
    versions = sorted(p.name for p in (tmp_path / "run" / "rewards").iterdir() if p.name.startswith("v"))
    assert len(versions) == len(driver.counters.reward_versions)  # each published once, by the driver
    assert newest_manifest()["extra"]["labels_in_store"] >= seen["rows_stored"], "the restarted trainer was not refilled"


def store_keys(path):
    """(set of (skill, pair key), number of rows) of a preference store."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT skill, pair_key FROM preferences").fetchall()
    return set(rows), len(rows)


def test_dead_llm_server_is_counted_and_never_blocks_learning(tmp_path, ray_local):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = local_cfg(tmp_path, time_limit_s=120, annotator={
        "num_annotators": 1, "backend": "openai", "model": "any", "base_url": f"http://127.0.0.1:{port}/v1"})
    driver = Driver(cfg)
    # ~20 s on an idle machine; the time limit is the backstop on a busy one
    stop_when(driver, lambda: driver.counters.annotation_failures >= 1 and driver.counters.env_steps > 4096, 115)
    summary = driver.run()
    assert driver.counters.annotation_failures >= 1 and driver.counters.labels == 0
    assert driver.counters.annotator_restarts == 0, "a failing server is not a dead actor"
    assert summary["env_steps"] > 4096, "learning went on while every LLM call failed"
    rows = [r["annotation_failures_total"] for r in read_metrics(tmp_path / "run") if "annotation_failures_total" in r]
    assert rows and rows[-1] == driver.counters.annotation_failures


def test_an_env_that_cannot_reset_is_rebuilt_counted_and_its_screen_kept(tmp_path, ray_local):
    # actor 0's first env fails its second reset (the first episode ends at 64 steps, mid-rollout)
    cfg = local_cfg(tmp_path, time_limit_s=120, env={"max_episode_steps": 64}, learner={"total_env_steps": 2048},
                    faults={"reset_fails_at_attempt": 2, "reset_fails_times": 1})
    driver = Driver(cfg)
    summary = driver.run()
    assert summary["status"] == "finished" and driver.counters.env_rebuilds == 1
    assert driver.counters.actor_restarts == 0 and driver.counters.actor_replacements == 0
    rows = [r["env_rebuilds_total"] for r in read_metrics(tmp_path / "run") if "env_rebuilds_total" in r]
    assert rows == [1]
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "env_rebuilds.jsonl").read_text().splitlines()]
    assert (record["actor"], record["env"], record["rebuilt"]) == (0, 0, True)
    assert any("welcome to NetHack" in line for line in record["screen"]), record["screen"]
    assert summary["env_steps"] >= 2048, "training went on"


def test_a_rollout_that_raises_is_replaced_and_the_run_goes_on(tmp_path, ray_local, caplog):
    from mmotif.skills.env import MAX_GAME_REBUILDS

    cfg = local_cfg(tmp_path, time_limit_s=120, env={"max_episode_steps": 64}, learner={"total_env_steps": 2048},
                    faults={"reset_fails_at_attempt": 2, "reset_fails_times": MAX_GAME_REBUILDS + 1})
    driver = Driver(cfg)
    with caplog.at_level(logging.WARNING, logger="mmotif"):
        summary = driver.run()
    assert summary["status"] == "finished" and driver.counters.actor_replacements == 1
    assert any("raised ResetError" in r.getMessage() and "replaced by a fresh actor" in r.getMessage()
               for r in caplog.records)
    rows = [r["actor_replacements_total/rollout"] for r in read_metrics(tmp_path / "run")
            if "actor_replacements_total/rollout" in r]
    assert rows == [1]
    assert summary["env_steps"] >= 2048, "the fresh actor trained on"


def test_when_every_replacement_is_spent_the_run_stops_cleanly(tmp_path, ray_local):
    cfg = local_cfg(tmp_path, time_limit_s=300, env={"max_episode_steps": 64},
                    actors={"max_replacements": 0},
                    faults={"reset_fails_at_attempt": 2, "reset_fails_times": 100})
    started = time.time()
    summary = Driver(cfg).run()
    assert summary["status"].startswith("stopped: no rollout actor left"), summary["status"]
    assert time.time() - started < 200, "the run ended instead of idling to its time limit"
    assert (tmp_path / "run" / "report" / "index.html").exists()
