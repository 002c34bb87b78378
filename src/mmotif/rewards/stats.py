"""Normalisation and threshold statistics saved with each reward model (spec §4.5, §4.6).

Statistics are taken over the UNIQUE reward-model inputs of a skill's data set
(`Caption.reward_key()`: current message + sign of depth change), so a message that occurs
a thousand times weighs as much as one that occurs once, as in the original.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from mmotif.contract import Caption
from mmotif.rewards.model import encode_captions

# 5%, 10%, ..., 95%: the rows of the original `train_norm_quantiles.csv`.
QUANTILE_LEVELS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))

# Floor on the standard deviation: a degenerate model (all unique inputs score the same)
# would otherwise divide by zero. The RL transform also clamps the normalised reward.
MIN_STD = 1e-6


@dataclass(frozen=True)
class RewardStats:
    """What the RL transform needs of one skill's reward model."""

    mean: float  # of raw scores over unique inputs
    std: float  # population std over unique inputs, floored at MIN_STD
    threshold_quantile: float  # e.g. 0.95 / 0.85
    threshold: float  # tau: that quantile of the normalised scores
    quantiles: tuple[float, ...]  # normalised scores at QUANTILE_LEVELS (5%..95%)
    n_unique: int  # number of unique (message, depth change) entries scored
    # normalised score of the neutral step (no message, same level) when the gate was raised
    # to it (`reward.gate_at_neutral`); None: the plain quantile threshold
    neutral_floor: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["quantiles"] = list(self.quantiles)
        d["quantile_levels"] = list(QUANTILE_LEVELS)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "RewardStats":
        levels = d.get("quantile_levels")
        if levels is not None and [round(float(x), 2) for x in levels] != list(QUANTILE_LEVELS):
            raise ValueError(f"quantile levels {levels} differ from {list(QUANTILE_LEVELS)}")
        stats = cls(mean=float(d["mean"]), std=float(d["std"]),
                    threshold_quantile=float(d["threshold_quantile"]), threshold=float(d["threshold"]),
                    quantiles=tuple(float(x) for x in d["quantiles"]), n_unique=int(d["n_unique"]),
                    neutral_floor=None if d.get("neutral_floor") is None else float(d["neutral_floor"]))
        stats.validate()
        return stats

    def validate(self) -> None:
        for name in ("mean", "std", "threshold"):
            v = getattr(self, name)
            if not math.isfinite(v):
                raise ValueError(f"reward stats: {name} is not finite ({v})")
        if self.std <= 0:
            raise ValueError(f"reward stats: std must be > 0, got {self.std}")
        if len(self.quantiles) != len(QUANTILE_LEVELS):
            raise ValueError(f"reward stats: {len(self.quantiles)} quantiles, expected {len(QUANTILE_LEVELS)}")

    @classmethod
    def constant(cls) -> "RewardStats":
        """Stats of the all-zero reward: raw 0 normalises to 0, and 0 > tau=0 is false."""
        return cls(mean=0.0, std=1.0, threshold_quantile=1.0, threshold=0.0,
                   quantiles=tuple(0.0 for _ in QUANTILE_LEVELS), n_unique=0)


def unique_reward_inputs(captions: Iterable[Caption]) -> list[Caption]:
    """One caption per distinct `reward_key()` (first occurrence), in input order."""
    seen: set[str] = set()
    out: list[Caption] = []
    for c in captions:
        k = c.reward_key()
        if k not in seen:
            seen.add(k)
            out.append(c)
    return out


def stats_from_scores(scores: np.ndarray | torch.Tensor | Sequence[float],
                      threshold_quantile: float, neutral_score: float | None = None) -> RewardStats:
    """Stats from the raw scores of the UNIQUE inputs (the caller deduplicates).

    `neutral_score`: the raw score of the neutral step. When given, the gate tau is at least
    its normalised score, so a step where nothing happened is never paid. (mmotif's deviation:
    the paper's threshold quantile sits above the lower mode of its nets' bimodal scores; a
    flat or young model puts the neutral step in the top 15% and pays noise.)"""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten().cpu().numpy()
    if s.size == 0:
        raise ValueError("cannot compute reward stats from zero scores")
    if not np.isfinite(s).all():
        raise ValueError(f"reward model produced {int((~np.isfinite(s)).sum())} non-finite scores")
    if not 0.0 <= threshold_quantile <= 1.0:
        raise ValueError(f"threshold_quantile must be in [0, 1], got {threshold_quantile}")
    mean = float(s.mean())
    std = max(float(s.std()), MIN_STD)  # population std, as a running mean/var over one pass
    norm = (s - mean) / std
    quantiles = tuple(float(q) for q in np.quantile(norm, QUANTILE_LEVELS))
    threshold = float(np.quantile(norm, threshold_quantile))
    floor = None if neutral_score is None else (float(neutral_score) - mean) / std
    if floor is not None:
        threshold = max(threshold, floor)
    return RewardStats(mean=mean, std=std, threshold_quantile=float(threshold_quantile),
                       threshold=threshold, quantiles=quantiles, n_unique=int(s.size), neutral_floor=floor)


@torch.no_grad()
def score_captions(model: torch.nn.Module, captions: Sequence[Caption], *, batch_size: int = 4096,
                   device: str | torch.device | None = None) -> torch.Tensor:
    """Raw reward-model scores (float32, CPU) of captions, in order."""
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(captions), batch_size):
            msg, diff = encode_captions(captions[i:i + batch_size])
            out.append(model(msg.to(device), diff.to(device)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def compute_reward_stats(model: torch.nn.Module, captions: Iterable[Caption], threshold_quantile: float,
                         *, neutral: Caption | None = None, batch_size: int = 4096,
                         device: str | torch.device | None = None) -> RewardStats:
    """Score the unique inputs among `captions` and summarise them (spec §4.5); `neutral`:
    the neutral step the gate may not fall below (see `stats_from_scores`)."""
    unique = unique_reward_inputs(captions)
    if not unique:
        raise ValueError("no captions to compute reward stats from")
    scores = score_captions(model, unique + ([neutral] if neutral is not None else []),
                            batch_size=batch_size, device=device)
    if neutral is None:
        return stats_from_scores(scores, threshold_quantile)
    return stats_from_scores(scores[:-1], threshold_quantile, neutral_score=float(scores[-1]))
