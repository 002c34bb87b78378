"""Reward trainer: retrains the per-skill reward models from the preference store when
enough new labels arrived, and publishes a new immutable version only where validation
does not regress.

The plain core of the `RewardTrainerActor` Ray shell (`mmotif.runtime.shells`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mmotif.config import RunConfig
from mmotif.contract import RewardModelVersion
from mmotif.rewards.probes import probe_margins
from mmotif.rewards.store import PreferenceStore
from mmotif.rewards.training import RewardTrainConfig, fit_skill_reward
from mmotif.rewards.versions import RewardModelSet, SkillReward, latest_version, load, publish

MIN_LABELS_PER_SKILL = 20  # below this a skill keeps its previous (or constant) model
ACCURACY_TOLERANCE = 0.02  # a retrained skill may lose this much held-out accuracy


class RewardTrainer:
    def __init__(self, cfg: RunConfig, store_path: str | Path, root: str | Path):
        self.cfg = cfg
        self.store = PreferenceStore(store_path)
        self.root = Path(root)
        self.skills = tuple(s.name for s in cfg.skills)
        self.quantiles = {s.name: s.threshold_quantile for s in cfg.skills}
        r = cfg.reward
        self.train_config = RewardTrainConfig(
            lr=r.lr, batch_size=r.batch_size, epochs=r.epochs, min_steps=r.min_steps,
            val_fraction=r.validation_fraction,
        )
        number = latest_version(self.root)
        self.current = (load(self.root, number, skills=self.skills) if number is not None
                        else RewardModelSet.constant(self.skills))
        self.labels_at_last_train = self.store.count() if number is not None else 0
        self.retrains = 0

    def due(self) -> bool:
        return self.store.count() - self.labels_at_last_train >= self.cfg.reward.retrain_every_labels

    def maybe_retrain(self, force: bool = False) -> RewardModelVersion | None:
        """Retrain if due (or forced); return the new version, or None if nothing changed."""
        if not force and not self.due():
            return None
        total = self.store.count()
        entries, changed = [], False
        for i, skill in enumerate(self.skills):
            entry = self._retrain_skill(skill, self.current.entries[i])
            changed |= entry is not self.current.entries[i]
            entries.append(entry)
        self.labels_at_last_train = total
        self.retrains += 1
        if not changed:
            return None
        margins = probe_margins(RewardModelSet(entries), self.cfg.skills)
        record = publish(self.root, entries, extra={"labels_in_store": total, "probe_margins": margins})
        self.current = load(self.root, record.version, skills=self.skills)
        return dataclasses.replace(record, probe_margins=tuple(margins[s] for s in self.skills))

    def _retrain_skill(self, skill: str, previous: SkillReward) -> SkillReward:
        prefs = list(self.store.iter_preferences(skill))
        if len(prefs) < MIN_LABELS_PER_SKILL or len(prefs) == previous.n_labels:
            return previous
        init = None if previous.is_constant else previous.state_dict
        entry, _ = fit_skill_reward(
            skill, prefs, self.train_config, seed=self.cfg.seed + self.retrains,
            threshold_quantile=self.quantiles[skill], init_state_dict=init,
        )
        if (previous.val_accuracy is not None and entry.val_accuracy is not None
                and entry.val_accuracy < previous.val_accuracy - ACCURACY_TOLERANCE):
            return previous  # do not publish a regression
        return entry

    def close(self) -> None:
        self.store.close()
