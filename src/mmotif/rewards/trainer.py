"""Reward trainer: retrains the per-skill reward models from the labels it was sent when
enough new ones arrived, and returns a new model set only where validation does not regress.

Two rules select what a skill trains on and when it is replaced:
- only labels of the run's own provenance (annotator model, prompt version, preference text;
  `reward.label_provenance`, `mmotif.rewards.provenance`); the others are counted by reason;
- a skill's model is replaced only by one trained on more labels than it was (`n_labels`),
  so models given with `reward.models` survive until the run has more labels of its own; a
  retrain starts from the current weights (the given ones included).

It opens no file: the preference store and the reward-model versions on disk have one owner,
the driver, which sends the trainer every stored label (`add`) and publishes what it returns
(`mmotif.rewards.versions.publish`). So the trainer can run on any node, with no shared disk.

The plain core of the `RewardTrainerActor` Ray shell (`mmotif.runtime.shells`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from mmotif.config import RunConfig
from mmotif.contract import LABEL_UNKNOWN, Caption, Preference, RewardModelVersion
from mmotif.rewards.probes import probe_margins
from mmotif.rewards.provenance import exclusion_line, label_filter
from mmotif.rewards.store import preference_key
from mmotif.rewards.training import fit_skill_reward, validation_accuracy
from mmotif.rewards.versions import RewardModelSet, SkillReward, publish

log = logging.getLogger(__name__)


class RewardTrainer:
    def __init__(self, cfg: RunConfig, current: RewardModelSet | None = None):
        self.cfg = cfg
        self.skills = tuple(s.name for s in cfg.skills)
        self.quantiles = {s.name: s.threshold_quantile for s in cfg.skills}
        # the gate's floor per skill (reward.gate_at_neutral): its neutral step as a reward input
        self.neutral = {s.name: Caption("", s.neutral_probe.message, s.neutral_probe.depth_change)
                        if cfg.reward.gate_at_neutral else None for s in cfg.skills}
        self.current = current if current is not None else RewardModelSet.constant(self.skills)
        # per skill, pair key -> label: a real label sent later replaces a stored UNKNOWN
        self._labels: dict[str, dict[str, Preference]] = {s: {} for s in self.skills}
        self.rows_received = 0  # rows sent by the store's owner (a restarted trainer has 0)
        self.rows_at_last_train = 0
        self.retrains = 0
        self.provenance = label_filter(cfg)  # None: every label trains
        self.excluded: Counter[str] = Counter()  # labels of another provenance, by reason
        self._excluded_logged = 0

    def add(self, preferences: Iterable[Preference], *, trained: bool = False) -> int:
        """Takes stored labels, in store order; returns the rows received so far. `trained`:
        the current models already learned from them (a restarted trainer being refilled)."""
        for pref in preferences:
            self.rows_received += 1
            reason = None if self.provenance is None else self.provenance.mismatch(pref)
            if reason is not None:
                self.excluded[reason] += 1
                continue
            self._labels[pref.pair.skill][preference_key(pref)] = pref
        if trained:
            self.rows_at_last_train = self.rows_received
        return self.rows_received

    def due(self) -> bool:
        return self.rows_received - self.rows_at_last_train >= self.cfg.reward.retrain_every_labels

    def maybe_retrain(self, force: bool = False) -> tuple[RewardModelSet, dict] | None:
        """Retrain if due (or forced). Returns (new unpublished model set, manifest extras)
        or None if nothing changed."""
        if not force and not self.due():
            return None
        entries, changed = [], False
        for i, skill in enumerate(self.skills):
            entry = self._retrain_skill(skill, self.current.entries[i])
            changed |= entry is not self.current.entries[i]
            entries.append(entry)
        self.rows_at_last_train = self.rows_received
        self.retrains += 1
        self._log_exclusions()
        if not changed:
            return None
        self.current = RewardModelSet(entries)
        margins = probe_margins(self.current, self.cfg.skills)
        return self.current, {"labels_in_store": self.rows_received, "probe_margins": margins,
                              **self.selection()}

    def selection(self) -> dict:
        """Which labels trained (manifest extras): the provenance required and the labels left out."""
        return {"label_provenance": "any" if self.provenance is None else self.provenance.to_dict(),
                "labels_excluded": dict(self.excluded)}

    def _log_exclusions(self) -> None:
        total = sum(self.excluded.values())
        if total > self._excluded_logged:
            log.warning(exclusion_line(self.excluded, self.rows_received, self.provenance))
            self._excluded_logged = total

    def _trainable(self, prefs: Sequence[Preference]) -> int:
        """How many of `prefs` training would use (the n_labels of the model it makes)."""
        return sum(self.cfg.reward.include_unknown or p.label != LABEL_UNKNOWN for p in prefs)

    def _retrain_skill(self, skill: str, previous: SkillReward) -> SkillReward:
        prefs = list(self._labels[skill].values())
        n = self._trainable(prefs)
        if n < self.cfg.reward.min_labels_per_skill or n <= previous.n_labels:
            return previous  # never replaced by a model trained on fewer labels (a given one included)
        init = None if previous.is_constant else previous.state_dict
        entry, _ = fit_skill_reward(
            skill, prefs, self.cfg.reward, seed=self.cfg.seed + self.retrains,
            threshold_quantile=self.quantiles[skill], init_state_dict=init, neutral=self.neutral[skill],
        )
        if self._regresses(entry, previous, prefs):
            return previous
        return entry

    def _regresses(self, entry: SkillReward, previous: SkillReward, prefs: Sequence[Preference]) -> bool:
        """Whether the retrained `entry` ranks the held-out labels worse than `previous` does,
        both measured on the same validation pairs (the current labels' split)."""
        if entry.val_accuracy is None or previous.is_constant:
            return False
        before = validation_accuracy(previous.state_dict, prefs, self.cfg.reward)
        return before is not None and entry.val_accuracy < before - self.cfg.reward.accuracy_tolerance


def publish_trained(root: str | Path, models: RewardModelSet, extra: dict,
                    skills: Sequence[str]) -> tuple[RewardModelVersion, RewardModelSet]:
    """Writes `models` as the next version under `root` (the owner's disk); returns its record,
    with the probe margins, and the model set numbered as published."""
    record = publish(root, models, extra=extra)
    margins = extra.get("probe_margins", {})
    record = dataclasses.replace(record, probe_margins=tuple(margins.get(s) for s in skills))
    return record, RewardModelSet(models.entries, version=record.version)
