"""What `mmotif run --resume` checks before it continues a run from its newest checkpoint
(the checkpoint layout itself, writing and reading, is `mmotif.checkpoint`).

`--resume` refuses (it does not rebuild) a checkpoint written by a different run config, and a
run whose preferences.sqlite lost labels the checkpoint counted (deleted, replaced, rows
removed): driver.json's `store_cursor` is the store's last row id at checkpoint time, and row
ids only grow.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mmotif.checkpoint import (
    CHECKPOINT_FILES,
    CheckpointError,
    checkpoint_folders,
    first_line,
    is_complete,
    latest_checkpoint,
    load_learner_file,
)
from mmotif.config import RunConfig, build_config

STORE_NAME = "preferences.sqlite"  # the run's preference store, beside checkpoints/


def _find_checkpoint(run_dir: Path) -> Path:
    path = latest_checkpoint(run_dir)
    if path is None:
        root = Path(run_dir) / "checkpoints"
        partial = [p.name for p in checkpoint_folders(root)]
        if partial:
            raise CheckpointError(f"--resume: no complete checkpoint under {root}: {', '.join(partial)} each lack "
                                  f"one of {', '.join(CHECKPOINT_FILES)}")
        raise CheckpointError(f"--resume: no checkpoint under {root}")
    return path


def _fallback_hint(path: Path) -> str:
    others = [p.name for p in checkpoint_folders(path.parent) if p != path and is_complete(p)]
    if not others:
        return "no older complete checkpoint is left to fall back to"
    return f"remove {path} (and write {others[-1]!r} into {path.parent / 'LATEST'}) to fall back to an older one"


def _corrupt(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is unreadable or corrupt ({first_line(err)}); {_fallback_hint(path)}")


def _saved_config(path: Path) -> RunConfig:
    try:
        return build_config(yaml.safe_load((path / "config.yaml").read_text()), str(path / "config.yaml"))
    except Exception as err:  # noqa: BLE001 - any failure to read means unusable
        raise _corrupt(path, err) from None


def check_resumable(run_dir: Path, cfg: RunConfig) -> Path:
    """The checkpoint `--resume` would use, after refusing one that cannot continue `cfg` or
    whose labels the run's preference store no longer holds; reads its config.yaml and
    driver.json and the store's last row id (cheap: call it before touching the run folder)."""
    path = _find_checkpoint(run_dir)
    _check_compatible(_saved_config(path), cfg, path)
    _check_store_holds_labels(path, Path(run_dir) / STORE_NAME)
    return path


def _driver_state(path: Path) -> dict:
    try:
        state = json.loads((path / "driver.json").read_text())
    except Exception as err:  # noqa: BLE001
        raise _corrupt(path, err) from None
    if not isinstance(state, dict):
        raise _corrupt(path, ValueError("driver.json is not a JSON object"))
    return state


def _check_store_holds_labels(path: Path, store_path: Path) -> None:
    """Refuse a resume whose preference store lost rows the checkpoint counted: the run
    would report the old label count and retrain reward models from fewer labels. The store's
    row ids only grow, so its cursor can only be at or past the checkpoint's."""
    from mmotif.rewards.store import PreferenceStore

    saved = _driver_state(path).get("store_cursor", 0)
    if not isinstance(saved, int) or saved <= 0:
        return
    advice = ("restore that file (with its -wal file) to resume, or start a new run in another "
              "run folder (paths.run_dir)")
    if not store_path.is_file():
        raise CheckpointError(f"--resume: {store_path} is missing, but checkpoint {path.name} was written "
                              f"after {saved} labels were stored in it; {advice}")
    with PreferenceStore(store_path) as store:
        cursor = store.cursor()
    if cursor < saved:
        raise CheckpointError(f"--resume: {store_path} ends at row {cursor}, but checkpoint {path.name} was "
                              f"written after {saved} labels were stored in it (the file was replaced or "
                              f"rows were removed); {advice}")


def load_checkpoint(run_dir: Path, cfg: RunConfig) -> tuple[dict, dict]:
    """(learner_state, driver_state) of the newest checkpoint; refuse one that cannot
    continue this config."""
    path = _find_checkpoint(run_dir)
    _check_compatible(_saved_config(path), cfg, path)
    driver_state = _driver_state(path)
    try:
        learner_state = load_learner_file(path / "learner.pt")
    except CheckpointError as err:
        raise CheckpointError(f"{err}; {_fallback_hint(path)}") from None
    if not isinstance(learner_state, dict) or "env_steps" not in learner_state:
        raise CheckpointError(f"{path / 'learner.pt'} is not a mmotif checkpoint (no learner state in it)")
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
