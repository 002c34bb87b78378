"""Checkpoints on disk: a writer killed mid-write never leaves a half-read checkpoint;
the same step saved twice keeps a readable LATEST; other configs are refused; nothing in a
checkpoint folder runs code (learner.pt is read weights-only, LATEST stays inside the run)."""

from __future__ import annotations

import argparse
import logging
import pickle
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mmotif.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint
from mmotif.config import load_config
from mmotif.runtime.resume import load_checkpoint

WRITER = """
import sys, torch
from pathlib import Path
from mmotif.config import load_config
from mmotif.checkpoint import save_checkpoint
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


# -- nothing in a checkpoint folder runs code ------------------------------------------------
class OpensAFile:
    """Unpickling this creates `marker`: what a crafted learner.pt could do with any code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted_run(tmp_path, fmt="torch"):
    """A run folder whose newest checkpoint's learner.pt would create a marker file when
    unpickled; (run_dir, checkpoint folder, marker)."""
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    ckpt = save_checkpoint(run_dir, cfg_for(run_dir), {"env_steps": 512, "net": {}}, {"env_steps": 512})
    payload = {"env_steps": 512, "net": OpensAFile(marker)}
    if fmt == "torch":
        torch.save(payload, ckpt / "learner.pt")
    else:  # a plain pickle, not a torch file
        (ckpt / "learner.pt").write_bytes(pickle.dumps(payload, protocol=2))
    return run_dir, ckpt, marker


def assert_refused(err, marker):
    msg = str(err.value)
    assert "learner.pt" in msg and "not a mmotif checkpoint" in msg, msg
    assert "\n" not in msg, "one line, not a traceback"
    assert not marker.exists(), "the crafted pickle ran"


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_learner_pt_that_would_run_code_is_refused_on_resume(tmp_path, fmt):
    run_dir, _, marker = crafted_run(tmp_path, fmt)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(run_dir, cfg_for(run_dir))
    assert_refused(err, marker)
    if fmt == "torch":
        assert "refuses to unpickle" in str(err.value)


def test_learner_pt_that_would_run_code_is_refused_by_eval(tmp_path, capsys):
    from mmotif.checkpoint import load_network
    from mmotif.cli import add_eval_arguments
    from mmotif.runtime.evaluation import cmd_eval

    run_dir, ckpt, marker = crafted_run(tmp_path)
    for where in (run_dir, ckpt, ckpt / "learner.pt"):
        with pytest.raises(CheckpointError) as err:
            load_network(where)
        assert_refused(err, marker)
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    args = parser.parse_args(["--task", "delphi", "--checkpoint", str(run_dir), "--out", str(tmp_path / "eval")])
    assert cmd_eval(args) == 2
    err = capsys.readouterr().err.strip()
    assert "not a mmotif checkpoint" in err and len(err.splitlines()) == 1, err
    assert not marker.exists()


def test_learner_state_is_saved_loadable_weights_only_and_resumes_exactly(tmp_path):
    from mmotif.learners.learner import Learner

    run_dir = tmp_path / "run"
    cfg = cfg_for(run_dir)
    learner = Learner(cfg)
    sum(p.sum() for p in learner.net.parameters()).backward()
    learner.optimizer.step()  # some optimiser state
    np.random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    random.seed(4)
    path = save_checkpoint(run_dir, cfg, learner.state(), {"env_steps": 0})
    torch.load(path / "learner.pt", weights_only=True)  # no numpy (or other) objects in it
    expected = (np.random.rand(4), np.random.randn(), random.random(), torch.rand(4))
    resumed = Learner(cfg)
    resumed.load_state(load_checkpoint(run_dir, cfg)[0])
    got = (np.random.rand(4), np.random.randn(), random.random(), torch.rand(4))
    assert np.array_equal(expected[0], got[0]) and expected[1:3] == got[1:3] and torch.equal(expected[3], got[3])
    a, b = learner.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert all(torch.equal(a["state"][i]["exp_avg_sq"], b["state"][i]["exp_avg_sq"]) for i in a["state"])
    # learner.pt written before the numpy RNG state became a tensor (an ndarray in it) still resumes
    old = learner.state()
    old["rng"]["numpy"] = np.random.get_state()
    torch.save(old, path / "learner.pt")
    resumed.load_state(load_checkpoint(run_dir, cfg)[0])
    assert np.array_equal(np.random.get_state()[1], old["rng"]["numpy"][1])
    # and a state that could not be read back weights-only is refused when saving, not on resume
    with pytest.raises(TypeError, match="numpy"):
        save_checkpoint(run_dir, cfg, {"env_steps": 1, "x": np.zeros(2)}, {})


# -- LATEST stays inside the run -------------------------------------------------------------
def elsewhere_checkpoint(tmp_path) -> Path:
    """A complete checkpoint of another run folder (state n=666)."""
    other = tmp_path / "elsewhere"
    return save_checkpoint(other, cfg_for(other), {"env_steps": 512, "n": 666}, {"env_steps": 512})


@pytest.mark.parametrize("latest", ["../x", "../../elsewhere/checkpoints/step_000000000512", "ABSOLUTE",
                                    "step_000000000512/../../../elsewhere/checkpoints/step_000000000512",
                                    "step_12-xyz", "LINK"])
def test_latest_pointing_outside_the_run_is_refused(tmp_path, latest):
    from mmotif.checkpoint import load_network

    outside = elsewhere_checkpoint(tmp_path)
    run_dir = tmp_path / "run"
    cfg = cfg_for(run_dir)
    save_checkpoint(run_dir, cfg, {"env_steps": 512, "n": 1}, {"env_steps": 512})
    root = run_dir / "checkpoints"
    if latest == "ABSOLUTE":
        latest = str(outside)
    elif latest == "LINK":  # a well-named folder that is a link out of the run
        latest = "step_000000000999"
        (root / latest).symlink_to(outside, target_is_directory=True)
    (root / "LATEST").write_text(latest + "\n")
    for load in (lambda: load_checkpoint(run_dir, cfg), lambda: latest_checkpoint(run_dir),
                 lambda: load_network(run_dir)):
        with pytest.raises(CheckpointError, match="refusing to follow it") as err:
            load()
        assert str(root / "LATEST") in str(err.value) and "\n" not in str(err.value)


def run_with_checkpoints(tmp_path):
    """A run with complete checkpoints at 512 (n=1) and 1024 (n=2) and an incomplete newer one."""
    run_dir = tmp_path / "run"
    cfg = cfg_for(run_dir)
    save_checkpoint(run_dir, cfg, {"env_steps": 512, "n": 1}, {"env_steps": 512})
    save_checkpoint(run_dir, cfg, {"env_steps": 1024, "n": 2}, {"env_steps": 1024})
    partial = run_dir / "checkpoints" / "step_000000002048"
    partial.mkdir()
    torch.save({"env_steps": 2048, "n": 3}, partial / "learner.pt")
    return run_dir, cfg


@pytest.mark.parametrize("how", ["empty", "missing"])
def test_empty_or_missing_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path, caplog, how):
    run_dir, cfg = run_with_checkpoints(tmp_path)
    pointer = run_dir / "checkpoints" / "LATEST"
    if how == "empty":
        pointer.write_text("\n")
    else:
        pointer.unlink()
    with caplog.at_level(logging.WARNING, logger="mmotif"):
        learner_state, driver_state = load_checkpoint(run_dir, cfg)
    assert learner_state["n"] == 2 and driver_state["env_steps"] == 1024
    assert latest_checkpoint(run_dir).name == "step_000000001024"
    assert any(how in r.getMessage() and "step_000000001024" in r.getMessage() for r in caplog.records)


def test_empty_latest_without_a_complete_checkpoint_says_so(tmp_path):
    run_dir = tmp_path / "run"
    root = run_dir / "checkpoints"
    (root / "step_000000000512").mkdir(parents=True)  # incomplete: no learner.pt, driver.json, config.yaml
    (root / "LATEST").write_text("")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(run_dir, cfg_for(run_dir))
    msg = str(err.value)
    assert "LATEST is empty" in msg and "no complete checkpoint" in msg and "remove" not in msg, msg


def test_resume_with_an_incompatible_config_leaves_config_yaml_unchanged(tmp_path):
    from mmotif.runtime.driver import Driver

    run_dir = tmp_path / "run"
    cfg = cfg_for(run_dir)
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    save_checkpoint(run_dir, cfg, {"env_steps": 512}, {"env_steps": 512})
    before = (run_dir / "config.yaml").read_bytes()
    other = cfg_for(run_dir, skills=[{"name": "descender", "description": "Goes down.",
                                      "preference": "Deeper is better."}])
    with pytest.raises(CheckpointError, match="different run config"):
        Driver(other, resume=True).run()
    assert (run_dir / "config.yaml").read_bytes() == before


def labelled_store(path: Path, n: int) -> None:
    from mmotif.contract import LABEL_FIRST, Caption, CaptionPair, Preference
    from mmotif.rewards.store import PreferenceStore

    with PreferenceStore(path) as store:
        store.append([Preference(CaptionPair("descender", Caption(f"a{i}", "m", 0), Caption(f"b{i}", "m", 1)),
                                 LABEL_FIRST, "test", "none", "v", 0.0) for i in range(n)])


def run_checkpointed_after_labels(tmp_path, labels: int):
    run_dir = tmp_path / "run"
    cfg = cfg_for(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    save_checkpoint(run_dir, cfg, {"env_steps": 512},
                    {"env_steps": 512, "store_cursor": labels, "labels": labels})
    return run_dir, cfg


@pytest.mark.parametrize("store", ["deleted", "emptied", "truncated"])
def test_resume_refuses_a_store_that_lost_the_checkpoints_labels(tmp_path, store):
    from mmotif.runtime.resume import check_resumable

    run_dir, cfg = run_checkpointed_after_labels(tmp_path, labels=5)
    path = run_dir / "preferences.sqlite"
    if store != "deleted":
        labelled_store(path, {"emptied": 0, "truncated": 3}[store])
    with pytest.raises(CheckpointError) as err:
        check_resumable(run_dir, cfg)
    msg = str(err.value)
    assert str(path) in msg and "5 labels" in msg and "\n" not in msg, msg
    assert store != "deleted" or not path.exists(), "the check must not create the store it misses"


def test_resume_accepts_a_store_with_labels_added_after_the_checkpoint(tmp_path):
    from mmotif.runtime.resume import check_resumable

    run_dir, cfg = run_checkpointed_after_labels(tmp_path, labels=3)
    labelled_store(run_dir / "preferences.sqlite", 5)
    assert check_resumable(run_dir, cfg).name == "step_000000000512"
    run_dir2, cfg2 = run_checkpointed_after_labels(tmp_path / "no-labels", labels=0)
    assert check_resumable(run_dir2, cfg2).name == "step_000000000512"  # annotation off: no store needed
