"""Reward-model probes: does a skill's reward model rank its own target events above a
neutral step?

Each skill declares canonical reward-model inputs (`SkillSpec.probes`: a descent for the
descender, an altar message for the worshipper, ...) and a neutral one (no message, same
level). A version's probe margin for a skill is

    (mean raw score of the targets - raw score of the neutral step) / std,

with std the version's normalisation std for that skill (spec §4.5), so the margin is in
the units the RL reward is normalised in: positive means the model prefers what the skill
description asks for, 0 is a flat (or constant) model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mmotif.contract import encode_reward_input
from mmotif.rewards.versions import RewardModelSet
from mmotif.skills.specs import Probe, SkillSpec


def _encode(probes: Sequence[Probe]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [encode_reward_input(p.message, p.depth_change) for p in probes]
    return torch.from_numpy(np.stack([m for m, _ in rows])), torch.from_numpy(np.stack([d for _, d in rows]))


def probe_margins(models: RewardModelSet, skills: Sequence[SkillSpec]) -> dict[str, float | None]:
    """Each skill's probe margin (None for a skill without probes)."""
    out: dict[str, float | None] = {}
    for spec in skills:
        if not spec.probes:
            out[spec.name] = None
            continue
        k = models.skills.index(spec.name)
        inputs = (*spec.probes, spec.neutral_probe)
        msg, diff = _encode(inputs)
        scores = models.score(msg, diff, torch.full((len(inputs),), k, dtype=torch.long)).cpu()
        std = max(float(models.std[k]), 1e-6)
        out[spec.name] = float((scores[:-1].mean() - scores[-1]) / std)
    return out
