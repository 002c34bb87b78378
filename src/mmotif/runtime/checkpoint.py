"""Atomic checkpoints of a run.

    <run_dir>/checkpoints/step_000000051200/
        learner.pt      weights, optimiser, counters, RNG states (torch.save)
        driver.json     driver counters, store cursor, reward-model version, RNG state
        config.yaml     the run's config
    <run_dir>/checkpoints/LATEST   name of the newest complete checkpoint

A checkpoint is assembled in a temporary folder, fsynced and renamed into place; LATEST is
replaced atomically afterwards. A process killed at any point leaves either the previous
checkpoint or the new one, never a half-written one that LATEST points to.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
import yaml

from mmotif.config import ConfigError, RunConfig, build_config
from mmotif.durable import fsync_dir, write_durably

KEEP = 3


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_checkpoint(run_dir: Path, cfg: RunConfig, learner_state: dict, driver_state: dict) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # a writer that died mid-write (one driver per run)
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step_{int(learner_state['env_steps']):012d}"
    if (root / name).exists():  # same step again (Ctrl-C right after a periodic one): never
        name += f"-{uuid.uuid4().hex[:6]}"  # delete the checkpoint LATEST points to
    tmp = root / f".tmp-{uuid.uuid4().hex[:10]}"
    tmp.mkdir()
    try:
        with open(tmp / "learner.pt", "wb") as f:
            torch.save(learner_state, f)
            f.flush()
            os.fsync(f.fileno())
        write_durably(tmp / "driver.json", json.dumps(driver_state, indent=1).encode())
        write_durably(tmp / "config.yaml", cfg.to_yaml().encode())
        fsync_dir(tmp)
        target = root / name
        os.rename(tmp, target)
        write_durably(root / ".LATEST.tmp", name.encode())
        os.replace(root / ".LATEST.tmp", root / "LATEST")
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep=KEEP, newest=name)
    return target


def _prune(root: Path, keep: int, newest: str) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        if old.name != newest:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "LATEST"
    if not pointer.is_file():
        return None
    return pointer.parent / pointer.read_text().strip()


def load_checkpoint(run_dir: Path, cfg: RunConfig) -> tuple[dict, dict]:
    """(learner_state, driver_state) of the newest checkpoint; refuse one that cannot
    continue this config."""
    path = latest_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"--resume: no checkpoint under {Path(run_dir) / 'checkpoints'}")
    try:
        saved_cfg = build_config(yaml.safe_load((path / "config.yaml").read_text()), str(path / "config.yaml"))
        driver_state = json.loads((path / "driver.json").read_text())
        learner_state = torch.load(path / "learner.pt", map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any failure to read means unusable
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({type(err).__name__}: {err}); "
                              f"remove it (and fix {path.parent / 'LATEST'}) to fall back to an older one") from None
    _check_compatible(saved_cfg, cfg, path)
    return learner_state, driver_state


def _check_compatible(saved: RunConfig, cfg: RunConfig, path: Path) -> None:
    problems = []
    if [s.name for s in saved.skills] != [s.name for s in cfg.skills]:
        problems.append(f"skills {[s.name for s in saved.skills]} vs {[s.name for s in cfg.skills]}")
    if saved.learner.network != cfg.learner.network:
        problems.append(f"network {saved.learner.network} vs {cfg.learner.network}")
    if tuple(saved.env.crop) != tuple(cfg.env.crop):
        problems.append(f"crop {saved.env.crop} vs {cfg.env.crop}")
    if problems:
        raise CheckpointError(f"checkpoint {path} was written by a different run config: "
                              + "; ".join(problems) + ". Resume with the run's own config.yaml.")
