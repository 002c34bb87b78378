"""Training one skill's reward model from LLM preferences (spec §4.3, §4.4).

Loss: soft Bradley-Terry cross-entropy with ties. For a pair scored r1 = r(s1), r2 = r(s2)
and target y = P(second preferred) (0 first, 1 second, 0.5 tie/unknown):

    loss = -[(1 - y) log softmax(r1, r2)_1 + y log softmax(r1, r2)_2]

Deviations from the original script (documented on purpose):
- **Held-out validation split.** The original has none (§4.3). We hold out a fixed fraction
  of pairs chosen by a hash of the order-insensitive pair key, so a pair stays on the same
  side as the store grows and successive versions are compared on comparable data.
- **Shuffling.** The original walks pairs in file order; we shuffle each epoch (seeded).
  Pairs arrive from a live sampler, so file order is correlated with training time.
- **At least `min_steps` Adam steps (default 300).** The paper trains once on 80k-200k pairs
  (1.6k-4k Adam steps); mmotif retrains continuously from a store that starts with a few
  hundred labels, where 20 epochs are a few dozen steps and leave the orthogonally initialised
  net near its starting point. The `local` preset also raises lr to 3e-4 with batch 64.

The settings are the run's `reward` section (`mmotif.config.RewardConfig`), read directly;
`paper_config()` gives the paper's exact values (no minimum, no shuffling).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from mmotif.config import RewardConfig
from mmotif.contract import LABEL_UNKNOWN, Caption, Preference
from mmotif.models.device import resolve_device
from mmotif.rewards.model import RewardModel, encode_captions
from mmotif.rewards.stats import compute_reward_stats
from mmotif.rewards.store import preference_key
from mmotif.rewards.versions import SkillReward


# ------------------------------------------------------------------------------- loss
def bradley_terry_loss(score_first: torch.Tensor, score_second: torch.Tensor,
                       target_second: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Soft Bradley-Terry cross-entropy; `target_second` = P(second preferred), 0.5 for ties."""
    logp = F.log_softmax(torch.stack([score_first, score_second], dim=-1), dim=-1)
    y = target_second.to(logp.dtype)
    loss = -((1.0 - y) * logp[..., 0] + y * logp[..., 1])
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")


# ----------------------------------------------------------------------------- split
def validation_fraction_of(key: str) -> float:
    """A number in [0, 1) fixed by the pair key (hex sha256)."""
    return int(key[:15], 16) / float(16 ** 15)


def is_validation(pref: Preference, val_fraction: float) -> bool:
    """Deterministic split: depends only on (skill, order-insensitive caption texts)."""
    return validation_fraction_of(preference_key(pref)) < val_fraction


# ---------------------------------------------------------------------------- config
def reward_config(config: RewardConfig | Mapping[str, Any] | None = None) -> RewardConfig:
    """The run's `reward` section as given, or one built from a mapping of its fields (None:
    the defaults)."""
    if config is None:
        return RewardConfig()
    if isinstance(config, RewardConfig):
        return config
    unknown = set(config) - set(RewardConfig.model_fields)
    if unknown:
        raise ValueError(f"unknown reward training option(s): {sorted(unknown)}")
    return RewardConfig(**config)


def paper_config(**overrides: Any) -> RewardConfig:
    """The original hyper-parameters: Adam 1e-5, batch 1,000, 20 epochs, no shuffling."""
    return RewardConfig(**{**dict(lr=1e-5, batch_size=1000, epochs=20, min_steps=0, shuffle=False), **overrides})


@dataclass
class RewardTrainReport:
    skill: str
    n_labels: int  # preferences given (after dropping unknowns if configured)
    n_train: int
    n_val: int
    n_val_decided: int  # validation pairs that are not ties/unknowns (accuracy denominator)
    n_unique_inputs: int  # distinct (message, depth change) among all captions
    val_accuracy: float | None  # on non-tie validation pairs; None if there are none
    val_loss: float | None
    train_accuracy: float | None
    train_loss: float
    epochs: int
    steps: int
    seconds: float
    seed: int
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # per-epoch metrics

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- trainer
def _index_pairs(prefs: Sequence[Preference]):
    """Unique reward inputs + (N, 2) indices into them + soft targets (N,)."""
    index: dict[str, int] = {}
    unique: list[Caption] = []

    def idx(c: Caption) -> int:
        k = c.reward_key()
        i = index.get(k)
        if i is None:
            i = index[k] = len(unique)
            unique.append(c)
        return i

    pairs = torch.tensor([[idx(p.pair.first), idx(p.pair.second)] for p in prefs],
                         dtype=torch.long).reshape(-1, 2)
    targets = torch.tensor([p.soft_target() for p in prefs], dtype=torch.float32)
    return unique, pairs, targets


def _metrics(scores: torch.Tensor, pairs: torch.Tensor, targets: torch.Tensor) -> tuple[float | None, float | None, int]:
    """(accuracy on decided pairs, mean loss, number of decided pairs) from unique-input scores."""
    if len(pairs) == 0:
        return None, None, 0
    s1, s2 = scores[pairs[:, 0]], scores[pairs[:, 1]]
    loss = float(bradley_terry_loss(s1, s2, targets))
    decided = (targets == 0.0) | (targets == 1.0)
    n = int(decided.sum())
    if n == 0:
        return None, loss, 0
    pred_second = s2 > s1
    acc = float((pred_second[decided] == (targets[decided] == 1.0)).float().mean())
    return acc, loss, n


@torch.no_grad()
def _score_unique(model: RewardModel, msg: torch.Tensor, diff: torch.Tensor, batch: int) -> torch.Tensor:
    model.eval()
    out = [model(msg[i:i + batch], diff[i:i + batch]) for i in range(0, len(msg), batch)]
    model.train()
    return torch.cat(out).float().cpu()


def _usable(prefs: Iterable[Preference], cfg: RewardConfig) -> list[Preference]:
    return [p for p in prefs if cfg.include_unknown or p.label != LABEL_UNKNOWN]


@torch.no_grad()
def validation_accuracy(state_dict: Mapping[str, torch.Tensor], preferences: Iterable[Preference],
                        config: RewardConfig | Mapping[str, Any] | None = None) -> float | None:
    """Accuracy of the model `state_dict` on the decided validation pairs of `preferences`,
    the split `train_reward_model` holds out of the same labels; None if there are none.

    What a retrained model's `val_accuracy` is compared with: two models measured on the
    validation pairs of different label sets (an early lucky 1.0 on 8 pairs against 0.93 on
    300) say nothing about which ranks better."""
    cfg = reward_config(config)
    val = [p for p in _usable(preferences, cfg) if is_validation(p, cfg.validation_fraction)]
    if not val:
        return None
    unique, pairs, targets = _index_pairs(val)
    msg, diff = encode_captions(unique)
    model = RewardModel()
    model.load_state_dict(state_dict)
    return _metrics(_score_unique(model, msg, diff, cfg.eval_batch_size), pairs, targets)[0]


def train_reward_model(preferences: Iterable[Preference],
                       config: RewardConfig | Mapping[str, Any] | None = None,
                       seed: int = 0, *, init_state_dict: Mapping[str, torch.Tensor] | None = None,
                       ) -> tuple[RewardModel, RewardTrainReport]:
    """Train one skill's reward model on its preferences; returns (model in eval mode, report).

    All preferences must belong to the same skill. `init_state_dict` warm-starts from a
    previous version (default: fresh orthogonal init, as in the paper). Deterministic for a
    given seed, data and device.
    """
    cfg = reward_config(config)
    prefs = _usable(preferences, cfg)
    if not prefs:
        raise ValueError("train_reward_model: no preferences to train on")
    skills = {p.pair.skill for p in prefs}
    if len(skills) != 1:
        raise ValueError(f"train_reward_model trains one skill at a time, got {sorted(skills)}")
    skill = skills.pop()
    device = resolve_device("reward.device", cfg.device)
    t0 = time.perf_counter()

    unique, pairs, targets = _index_pairs(prefs)
    msg, diff = encode_captions(unique)
    msg, diff = msg.to(device), diff.to(device)
    val_mask = torch.tensor([is_validation(p, cfg.validation_fraction) for p in prefs], dtype=torch.bool)
    train_idx = torch.nonzero(~val_mask).flatten()
    val_idx = torch.nonzero(val_mask).flatten()
    if len(train_idx) == 0:
        raise ValueError(f"train_reward_model[{skill}]: all {len(prefs)} pairs fell in the validation "
                         f"split (validation_fraction={cfg.validation_fraction}); add labels or lower it")

    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = RewardModel()
    if init_state_dict is not None:
        model.load_state_dict(init_state_dict)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    n_train = len(train_idx)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    if cfg.max_steps is not None:
        epochs = max(1, min(epochs, cfg.max_steps // steps_per_epoch or 1))
    pairs_d, targets_d = pairs.to(device), targets.to(device)
    history: list[dict] = []
    steps = 0
    for epoch in range(epochs):
        order = train_idx[torch.randperm(n_train, generator=gen)] if cfg.shuffle else train_idx
        total, count = 0.0, 0
        for start in range(0, n_train, cfg.batch_size):
            b = order[start:start + cfg.batch_size].to(device)
            pb = pairs_d[b]
            # each distinct caption of the batch is encoded once (pairs share captions a lot)
            used, where = torch.unique(pb.reshape(-1), return_inverse=True)
            scores = model(msg[used], diff[used])[where].view(-1, 2)
            loss = bradley_terry_loss(scores[:, 0], scores[:, 1], targets_d[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            steps += 1
            total += float(loss.detach()) * len(b)
            count += len(b)
            if not math.isfinite(total):
                raise FloatingPointError(f"train_reward_model[{skill}]: loss became non-finite at step {steps}")
        scores_all = _score_unique(model, msg, diff, cfg.eval_batch_size)
        val_acc, val_loss, n_val_decided = _metrics(scores_all, pairs[val_idx], targets[val_idx])
        train_acc, _, _ = _metrics(scores_all, pairs[train_idx], targets[train_idx])
        history.append(dict(epoch=epoch + 1, steps=steps, train_loss=total / max(count, 1),
                            train_accuracy=train_acc, val_loss=val_loss, val_accuracy=val_acc))

    model.eval()
    last = history[-1]
    report = RewardTrainReport(
        skill=skill, n_labels=len(prefs), n_train=n_train, n_val=len(val_idx),
        n_val_decided=n_val_decided, n_unique_inputs=len(unique),
        val_accuracy=last["val_accuracy"], val_loss=last["val_loss"],
        train_accuracy=last["train_accuracy"], train_loss=last["train_loss"],
        epochs=epochs, steps=steps, seconds=time.perf_counter() - t0, seed=int(seed),
        config=cfg.model_dump(mode="json"), history=history,
    )
    return model, report


def fit_skill_reward(skill: str, preferences: Iterable[Preference],
                     config: RewardConfig | Mapping[str, Any] | None = None, seed: int = 0,
                     *, threshold_quantile: float,
                     init_state_dict: Mapping[str, torch.Tensor] | None = None,
                     neutral: Caption | None = None):
    """Train + compute stats for one skill; returns (SkillReward ready to publish, report).
    `neutral`: the skill's neutral step, a floor for the gate (`reward.gate_at_neutral`).

    Normalisation stats are taken over the unique inputs of ALL the skill's captions
    (training and validation pairs alike), as the original does over its whole data set.
    """
    prefs = list(preferences)
    bad = {p.pair.skill for p in prefs} - {skill}
    if bad:
        raise ValueError(f"fit_skill_reward({skill!r}) got preferences for other skills {sorted(bad)}")
    model, report = train_reward_model(prefs, config, seed, init_state_dict=init_state_dict)
    captions = [c for p in prefs for c in (p.pair.first, p.pair.second)]
    stats = compute_reward_stats(model, captions, threshold_quantile, neutral=neutral)
    entry = SkillReward(name=skill, state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                        stats=stats, val_accuracy=report.val_accuracy, n_labels=report.n_labels,
                        train_report=report.to_dict())
    return entry, report


__all__ = [
    "RewardTrainReport", "bradley_terry_loss",
    "fit_skill_reward", "is_validation", "paper_config", "reward_config",
    "train_reward_model", "validation_accuracy",
]
