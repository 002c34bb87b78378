"""The RL-time intrinsic reward (spec §4.6), as one pure batched torch function.

For each step with active skill k (the skill id stored in the observation o_t):

    r_hat = clamp((raw - mu_k) / sigma_k, -bound, bound)
    r_int = coef * r_hat * 1[r_hat > tau_k] / N(message_t) ** beta

with the paper's beta = 3, coef (`llm_reward`) = 0.1 and tau_k the per-skill quantile
threshold. The extrinsic reward is not part of this function (its weight is 0 in the paper).

The clamp is a mmotif addition: the original has none. Normalised scores of the released
models stay within a few units (their 95% quantiles are below 1.4), so |r_hat| <= 10 does not
change a healthy model's reward, but it keeps a broken or half-trained reward model from
feeding huge values into V-trace.
"""

from __future__ import annotations

import torch

DEFAULT_BETA = 3.0
DEFAULT_COEF = 0.1
DEFAULT_BOUND = 10.0


def intrinsic_reward(raw: torch.Tensor, skill_ids: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                     threshold: torch.Tensor, msg_count: torch.Tensor, *, beta: float = DEFAULT_BETA,
                     coef: float = DEFAULT_COEF, bound: float | None = DEFAULT_BOUND) -> torch.Tensor:
    """Intrinsic reward for a batch of steps (any shape, e.g. (T, B) or (N,)).

    raw:        float, raw reward-model scores r_phi_k(message_t, diffstats_t), k = skill_ids
    skill_ids:  integer, same shape as raw, values in [0, K)
    mean, std, threshold: float (K,), per-skill normalisation stats and tau_k (normalised units)
    msg_count:  integer or float, same shape as raw: episodic count of the current message,
                including this occurrence (>= 1; values below 1 are treated as 1)
    Returns float32 of raw's shape, on raw's device.

    Raises ValueError naming the offending tensor if raw or the stats are not finite, if a
    skill id is out of range, or if shapes disagree. (The check costs one device sync.)
    """
    if skill_ids.shape != raw.shape or msg_count.shape != raw.shape:
        raise ValueError(f"intrinsic_reward: raw {tuple(raw.shape)}, skill_ids {tuple(skill_ids.shape)} "
                         f"and msg_count {tuple(msg_count.shape)} must have the same shape")
    if skill_ids.dtype.is_floating_point or skill_ids.dtype == torch.bool:
        raise ValueError(f"intrinsic_reward: skill_ids must be an integer tensor, got {skill_ids.dtype}")
    k = mean.shape[0] if mean.dim() == 1 else -1
    if k < 1 or std.shape != mean.shape or threshold.shape != mean.shape:
        raise ValueError(f"intrinsic_reward: mean {tuple(mean.shape)}, std {tuple(std.shape)} and "
                         f"threshold {tuple(threshold.shape)} must all be (K,) with K >= 1")
    if bound is not None and not bound > 0:
        raise ValueError(f"intrinsic_reward: bound must be > 0 or None, got {bound}")

    raw = raw.float()
    dev = raw.device
    mean, std, threshold = mean.to(dev, torch.float32), std.to(dev, torch.float32), threshold.to(dev, torch.float32)
    skill_ids = skill_ids.to(dev)

    # One sync for all checks; diagnose only on failure.
    bad = ((~torch.isfinite(raw)).any() | (skill_ids < 0).any() | (skill_ids >= k).any()
           | (~torch.isfinite(mean)).any() | (~torch.isfinite(std)).any() | (std <= 0).any()
           | torch.isnan(threshold).any())
    if bool(bad):
        n_bad = int((~torch.isfinite(raw)).sum())
        if n_bad:
            raise ValueError(f"intrinsic_reward: `raw` (reward-model scores) has {n_bad} non-finite "
                             f"value(s) (NaN/inf) out of {raw.numel()}; the reward model is broken")
        if bool((skill_ids < 0).any() | (skill_ids >= k).any()):
            raise ValueError(f"intrinsic_reward: `skill_ids` out of range [0, {k}): "
                             f"min {int(skill_ids.min())}, max {int(skill_ids.max())}")
        for name, t in (("mean", mean), ("std", std)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"intrinsic_reward: `{name}` has non-finite values: {t.tolist()}")
        if bool((std <= 0).any()):
            raise ValueError(f"intrinsic_reward: `std` must be > 0: {std.tolist()}")
        raise ValueError(f"intrinsic_reward: `threshold` has NaN values: {threshold.tolist()}")

    r_hat = (raw - mean[skill_ids]) / std[skill_ids]
    if bound is not None:
        r_hat = r_hat.clamp(-bound, bound)
    gated = torch.where(r_hat > threshold[skill_ids], r_hat, torch.zeros_like(r_hat))
    count = msg_count.to(dev, torch.float32).clamp_min(1.0)
    return coef * gated / count.pow(beta)
