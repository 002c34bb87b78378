"""Checkpoints on disk: a writer killed mid-write never leaves a half-read checkpoint;
the same step saved twice keeps a readable LATEST; other configs are refused."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmotif.config import load_config
from mmotif.runtime.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

WRITER = """
import sys, torch
from pathlib import Path
from mmotif.config import load_config
from mmotif.runtime.checkpoint import save_checkpoint
run_dir = Path(sys.argv[1])
cfg = load_config(preset_name="local", overrides={"paths": {"run_dir": str(run_dir)}})
state = {"env_steps": 2048, "net": {"w": torch.ones(3)}}
save_checkpoint(run_dir, cfg, state, {"env_steps": 2048})
print("first saved", flush=True)
huge = {"env_steps": 4096, "net": {"w": torch.zeros(3), "big": torch.randn(150_000_000)}}  # 600 MB
save_checkpoint(run_dir, cfg, huge, {"env_steps": 4096})
print("second saved", flush=True)
"""


def cfg_for(run_dir: Path, **overrides):
    return load_config(preset_name="local", overrides={"paths": {"run_dir": str(run_dir)}, **overrides})


def test_writer_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "first saved"
        deadline = time.time() + 60
        while not list((run_dir / "checkpoints").glob(".tmp-*/learner.pt")) and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # inside torch.save of the 600 MB state
    finally:
        proc.kill()
        proc.wait()
    assert list((run_dir / "checkpoints").glob(".tmp-*")), "the kill should land mid-write"
    cfg = cfg_for(run_dir)
    learner_state, driver_state = load_checkpoint(run_dir, cfg)
    assert learner_state["env_steps"] == 2048 and torch.equal(learner_state["net"]["w"], torch.ones(3))
    # the next save clears the dead writer's leftovers
    save_checkpoint(run_dir, cfg, {"env_steps": 3072, "net": {}}, {"env_steps": 3072})
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    assert latest_checkpoint(run_dir).name == "step_000000003072"


def test_same_step_twice_keeps_both_readable(tmp_path):
    cfg = cfg_for(tmp_path / "run")
    first = save_checkpoint(tmp_path / "run", cfg, {"env_steps": 512, "n": 1}, {})
    second = save_checkpoint(tmp_path / "run", cfg, {"env_steps": 512, "n": 2}, {})
    assert first != second and first.is_dir() and second.is_dir()
    assert latest_checkpoint(tmp_path / "run") == second
    assert load_checkpoint(tmp_path / "run", cfg)[0]["n"] == 2


def test_other_skill_set_is_refused(tmp_path):
    cfg = cfg_for(tmp_path / "run")
    save_checkpoint(tmp_path / "run", cfg, {"env_steps": 512}, {})
    other = cfg_for(tmp_path / "run", skills=[{"name": "descender", "description": "Goes down.",
                                                 "preference": "Deeper is better."}])
    with pytest.raises(CheckpointError, match="different run config: skills"):
        load_checkpoint(tmp_path / "run", other)
