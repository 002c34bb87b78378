"""Bounded soak: a local run (embedded LLM included) with one injected fault of each kind,
then a JSON summary: steps done, faults injected, faults survived, preference rows lost.

Faults:
  rollout_segfault   rollout actor 0 kills itself with SIGSEGV (as an NLE crash would)
  rollout_hang       the last rollout actor sleeps inside a rollout (the watchdog must act)
  annotator_killed   ray.kill of the annotator actor mid-run (Ray restarts it)
  driver_killed      SIGKILL of the whole driver process group, then `mmotif run --resume`
  hostile_policy     a training policy that imports os: must be refused before any game

Usage: python bench/soak.py [--minutes 20]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmotif.config import load_config
from mmotif.checkpoint import latest_checkpoint
from mmotif.evaluation.report import read_metrics
from mmotif.sandbox import UnsafeCodeError
from mmotif.skills.build import make_skill_env


def store_keys(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT pair_key FROM preferences")}


def hostile_policy_refused(work: Path) -> bool:
    policy = work / "hostile.py"
    policy.write_text("import os\nclass NetHackPlayer:\n    pass\n")
    cfg = load_config(preset_name="local", overrides={"env": {"training_policy": str(policy)}})
    try:
        make_skill_env(cfg, seed=0)
    except UnsafeCodeError:
        return True
    return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=20)
    args = p.parse_args()
    total = args.minutes * 60
    work = Path(tempfile.mkdtemp(prefix="mmotif-soak-"))
    run_dir = work / "run"
    cfg = load_config(preset_name="local", overrides={
        "actors": {"num_actors": 2, "envs_per_actor": 8, "rollout_timeout_s": 30},
        "faults": {"crash_rollout_at_steps": [4096], "stall_rollout_at_steps": [8192], "stall_seconds": 3600},
        "checkpoint_every_steps": 20_000,
        "paths": {"run_dir": str(run_dir)},
    })
    config = work / "run.yaml"
    config.write_text(cfg.to_yaml())
    faults = {"hostile_policy": hostile_policy_refused(work)}

    # Phase 1: a driver process with the rollout faults; killed outright after ~half the time.
    cmd = [sys.executable, "-m", "mmotif.cli", "run", "--config", str(config), "--time-limit", str(total)]
    log1 = open(work / "phase1.log", "w")
    proc = subprocess.Popen(cmd, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(total / 2)
    while latest_checkpoint(run_dir) is None and proc.poll() is None:
        time.sleep(5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = store_keys(run_dir / "preferences.sqlite")
    checkpoint = latest_checkpoint(run_dir)

    # Phase 2: resume; the annotator is killed mid-way by a watcher in the resumed driver.
    from mmotif.runtime.driver import Driver
    import threading

    import ray

    resumed = load_config(config, overrides={"time_limit_s": total / 2})
    driver = Driver(resumed, resume=True)
    killed = {}

    def kill_annotator():
        time.sleep(min(60, total / 4))
        if driver.annotators:
            ray.kill(driver.annotators[0], no_restart=False)
            killed["at"] = time.time()

    threading.Thread(target=kill_annotator, daemon=True).start()
    try:
        summary = driver.run()
        resumed_ok = True
    except Exception as err:  # noqa: BLE001 - the soak reports, it does not crash
        summary, resumed_ok = {"error": repr(err), "env_steps": driver.counters.env_steps}, False
    ray.shutdown()
    after = store_keys(run_dir / "preferences.sqlite")
    restarts = max((r.get("actor_restarts_total/rollout", 0) for r in read_metrics(run_dir)), default=0)
    faults.update({  # each rollout fault costs one actor restart, and the run went on
        "rollout_segfault": restarts >= 1,
        "rollout_hang": restarts >= 2,
        "driver_killed": resumed_ok and checkpoint is not None,
        "annotator_killed": resumed_ok and "at" in killed,
    })
    print(json.dumps({
        "minutes": args.minutes,
        "env_steps": summary.get("env_steps"),
        "faults_injected": len(faults),
        "faults_survived": sum(bool(v) for v in faults.values()),
        "faults": faults,
        "rows_committed_before_kill": len(committed),
        "rows_lost": len(committed - after),
        "rows_after": len(after),
        "run_dir": str(run_dir),
    }, indent=2))


if __name__ == "__main__":
    main()
