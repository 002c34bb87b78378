"""Reward models given with `reward.models`: where a run's learner starts, and what resume loads.

A run given a published version folder (e.g. from `mmotif train-rewards`) scores with it from
the first step, under reward-model version GIVEN_VERSION (0; the run's own versions count
from 1 under `<run_dir>/rewards`, so the two never share a number). The reward trainer keeps
each given skill model until the run has more labels for that skill than the model was
trained on, and starts its retrain from the given weights (`mmotif.rewards.trainer`).

`--resume` reloads the models the checkpoint's learner used: version 0 from where
`reward.models` points (a one-line error names the path when they are gone), any other
version from the run's own rewards folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmotif.config import RunConfig
from mmotif.rewards.versions import MANIFEST, RewardModelSet, RewardVersionError, load, load_dir

log = logging.getLogger(__name__)

GIVEN_VERSION = 0


def load_given(folder: Path, skills: list[str]) -> RewardModelSet:
    """The `reward.models` version, numbered GIVEN_VERSION; a missing folder or a manifest of
    the wrong shape (valid JSON that is not a manifest) is refused in one line."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise RewardVersionError(f"reward.models: {folder} is gone (no such folder); it holds the reward "
                                 f"models this run starts from: restore it or point reward.models at them")
    try:
        models = load_dir(folder, skills=skills)
    except RewardVersionError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise RewardVersionError(f"reward-model version {folder}: malformed {MANIFEST} "
                                 f"({type(err).__name__}: {str(err)[:200]})") from None
    return RewardModelSet(models.entries, version=GIVEN_VERSION)


def starting_reward_models(cfg: RunConfig, reward_root: Path,
                           driver_state: Mapping[str, Any] | None) -> RewardModelSet | None:
    """The models the learner starts with: a resumed run's (the checkpoint's version), else
    the given ones, else None (constant rewards)."""
    skills = [s.name for s in cfg.skills]
    if driver_state is None:
        return None if cfg.reward.models is None else load_given(cfg.reward.models, skills)
    version = int(driver_state["reward_model_version"])
    if version < 0:
        return None
    if version != GIVEN_VERSION:
        return load(reward_root, version, skills=skills)
    if cfg.reward.models is None:
        raise RewardVersionError("--resume: the checkpoint's learner scores with reward models given in "
                                 "reward.models, but this config gives none; resume with the run's config.yaml")
    return load_given(cfg.reward.models, skills)


def given_record(folder: Path, models: RewardModelSet) -> dict:
    """What a run records of its given models (driver.json, its published manifests): path,
    the folder's own version number, labels per skill and the labels' provenance, if known."""
    folder = Path(folder).expanduser()
    manifest = json.loads((folder / MANIFEST).read_text())
    return {"path": str(folder.resolve()), "version": manifest.get("version"),
            "n_labels": {e.name: int(e.n_labels) for e in models.entries},
            "label_provenance": (manifest.get("extra") or {}).get("label_provenance")}


def describe_given(record: Mapping[str, Any], run_provenance: Mapping[str, Any]) -> None:
    """Logs what the run starts from, and a warning when the given models learned from labels
    of another provenance than this run's annotator makes (or of one not recorded)."""
    log.info("reward.models: starting from %s (version %s, labels per skill %s); a skill is retrained "
                "only once this run holds more labels for it, starting from these weights",
                record["path"], record["version"], record["n_labels"])
    theirs = record.get("label_provenance")
    if theirs != run_provenance:
        log.warning("reward.models: those models learned from labels of provenance %s, this run's annotator "
                    "makes %s", theirs or "not recorded", run_provenance)
