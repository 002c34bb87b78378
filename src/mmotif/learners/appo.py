"""APPO with V-trace (spec §8): targets, loss and one learner step, the math in one place.

Time-major (T, B) tensors throughout. `dones[t]` means the episode ended after step t: no
bootstrapping and no recurrent state across it. Skill switches are not episode ends (§8.3).

    rho_t = min(rho_bar, pi(a_t|x_t) / mu(a_t|x_t)),   c_t = min(c_bar, pi/mu)
    g_t   = gamma * (1 - dones[t])
    delta_t = rho_t * (r_t + g_t * V(x_{t+1}) - V(x_t))
    vs_t - V(x_t) = delta_t + g_t * c_t * (vs_{t+1} - V(x_{t+1}))            (IMPALA, Espeholt 2018)
    A_t = rho_t * (r_t + g_t * vs_{t+1} - V(x_t))                            (policy-gradient advantage)

    ratio = clamp(pi/mu, 0.05, 20)
    L_pi  = -mean(min(ratio * A, clamp(ratio, 1/(1+eps), 1+eps) * A)),  A normalised per minibatch
    L_v   = mean(max((V - vs)^2, (V_old + clamp(V - V_old, -c, c) - vs)^2))
    L     = L_pi + value_coef * L_v - entropy_coef * H[pi]

The hyperparameters are the run's `learner` section (`mmotif.config.LearnerConfig`, the paper's
defaults), read directly; `hp.bf16_autocast` is applied as given (the Learner clears it off CUDA).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor, nn

from mmotif.config import LearnerConfig


def forward_precision(device: torch.device, bf16: bool):
    """Autocast context for the network's forward: bfloat16 on `device` when `bf16`, else a
    no-op. Backward runs outside it (autocast's rule); bfloat16 has float32's exponent range,
    so no gradient scaling is needed. The loss, V-trace and Adam read `.float()` outputs."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def make_optimizer(net: nn.Module, hp: LearnerConfig) -> torch.optim.Adam:
    return torch.optim.Adam(net.parameters(), lr=hp.lr, betas=hp.adam_betas, eps=hp.adam_eps)


# ----------------------------------------------------------------------------- V-trace
@torch.no_grad()
def vtrace(behaviour_logp: Tensor, target_logp: Tensor, rewards: Tensor, values: Tensor,
           bootstrap_value: Tensor, dones: Tensor, gamma: float, rho_bar: float = 1.0,
           c_bar: float = 1.0) -> tuple[Tensor, Tensor]:
    """V-trace value targets `vs` (T, B) and policy-gradient advantages (T, B).

    behaviour_logp, target_logp: log mu(a_t|x_t), log pi(a_t|x_t); rewards, values: (T, B);
    bootstrap_value: V(x_T) (B,); dones: (T, B), episode ended after step t.
    """
    rhos = torch.exp(target_logp - behaviour_logp)
    clipped_rhos = rhos.clamp(max=rho_bar)
    cs = rhos.clamp(max=c_bar)
    discounts = gamma * (1.0 - dones.to(values.dtype))
    next_values = torch.cat([values[1:], bootstrap_value.unsqueeze(0)], dim=0)
    deltas = clipped_rhos * (rewards + discounts * next_values - values)

    vs_minus_v = torch.zeros_like(values)
    acc = torch.zeros_like(bootstrap_value)
    for t in reversed(range(values.shape[0])):
        acc = deltas[t] + discounts[t] * cs[t] * acc
        vs_minus_v[t] = acc
    vs = values + vs_minus_v

    next_vs = torch.cat([vs[1:], bootstrap_value.unsqueeze(0)], dim=0)
    pg_advantages = clipped_rhos * (rewards + discounts * next_vs - values)
    return vs, pg_advantages


# -------------------------------------------------------------------------------- loss
def policy_loss(ratio: Tensor, advantages: Tensor, clip_ratio: float) -> Tensor:
    """PPO clipped surrogate with the asymmetric range [1/(1+clip), 1+clip], as a loss."""
    clipped = ratio.clamp(1.0 / (1.0 + clip_ratio), 1.0 + clip_ratio)
    return -torch.min(ratio * advantages, clipped * advantages).mean()


def value_loss(values: Tensor, old_values: Tensor, targets: Tensor, value_clip: float) -> Tensor:
    """Squared error to the targets, pessimistic over the value clipped around the old value."""
    clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    return torch.max((values - targets) ** 2, (clipped - targets) ** 2).mean()


def normalize(advantages: Tensor, std_floor: float) -> Tensor:
    std, mean = torch.std_mean(advantages)
    return (advantages - mean) / std.clamp(min=std_floor)


def appo_loss(logits: Tensor, values: Tensor, actions: Tensor, behaviour_logp: Tensor,
              old_values: Tensor, vs: Tensor, advantages: Tensor,
              hp: LearnerConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """Total APPO loss and its stats (0-d tensors, no host sync). Shapes: logits (..., A);
    everything else (...).

    `vs` and `advantages` are V-trace outputs (no gradient); `old_values` and
    `behaviour_logp` come from the acting policy.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    logp = log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    log_ratio = logp - behaviour_logp
    ratio = torch.exp(log_ratio).clamp(hp.ratio_min, hp.ratio_max)

    adv = advantages.detach()
    if hp.normalize_advantages:
        adv = normalize(adv, hp.adv_std_floor)

    pi_loss = policy_loss(ratio, adv, hp.clip_ratio)
    v_loss = value_loss(values.float(), old_values, vs.detach(), hp.value_clip)
    entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
    loss = pi_loss + hp.value_coef * v_loss - hp.entropy_coef * entropy

    with torch.no_grad():
        lo, hi = 1.0 / (1.0 + hp.clip_ratio), 1.0 + hp.clip_ratio
        raw_ratio = torch.exp(log_ratio)
        stats = {
            "loss": loss.detach(),
            "policy_loss": pi_loss.detach(),
            "value_loss": v_loss.detach(),
            "entropy": entropy.detach(),
            "ratio_mean": ratio.mean(),
            "clip_fraction": ((ratio < lo) | (ratio > hi)).float().mean(),
            "approx_kl": ((raw_ratio - 1.0) - log_ratio).mean(),  # KL(mu || pi), k3 estimator
            "adv_mean": advantages.mean(),
            "adv_std": advantages.std(),
            "value_mean": values.mean(),
            "vs_mean": vs.mean(),
        }
    return loss, stats


# ------------------------------------------------------------------------ learner step
def _check_finite(name: str, t: Tensor) -> None:
    if not torch.isfinite(t).all():
        raise FloatingPointError(f"{name} contains NaN/Inf")


def _first_nonfinite(named: list[tuple[str, Tensor]]) -> str | None:
    for name, t in named:
        if not torch.isfinite(t).all():
            return name
    return None


def learner_step(net: nn.Module, optimizer: torch.optim.Optimizer, batch: Mapping[str, object],
                 hp: LearnerConfig) -> dict[str, float]:
    """One APPO/V-trace SGD step over a (T, B) batch of trajectories.

    batch keys (tensors on the network's device):
        obs:          dict of (T + 1, B, ...) observations; obs[T] is the observation after
                      the last step, used only to bootstrap. With (T, B, ...) observations a
                      `bootstrap_value` (B,) from the acting policy must be given instead.
        actions:      (T, B) int64
        logp:         (T, B) behaviour log-prob of the actions
        values:       (T, B) behaviour values (for value clipping)
        rewards:      (T, B) float
        dones:        (T, B) bool, episode ended after step t
        core_state:   (B, H) recurrent state entering step 0
        bootstrap_value: optional (B,), see obs

    Raises FloatingPointError naming the offending tensor (an input, the loss, a parameter or
    a gradient) before the optimizer step, so parameters stay untouched.
    """
    obs = batch["obs"]
    actions, behaviour_logp = batch["actions"], batch["logp"]
    old_values, rewards, dones = batch["values"], batch["rewards"], batch["dones"].bool()
    T = actions.shape[0]

    for key in ("rewards", "logp", "values"):
        _check_finite(f"batch[{key!r}]", batch[key])
    for key in ("blstats",):
        _check_finite(f"batch['obs'][{key!r}]", obs[key])
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if not torch.isfinite(torch.stack([p.detach().sum() for _, p in params]).sum()):  # one sync
        culprit = _first_nonfinite([(n, p.detach()) for n, p in params])
        if culprit is not None:
            raise FloatingPointError(f"parameter {culprit} contains NaN/Inf")

    # Forward from the stored initial state; obs[T] (if present) only yields the bootstrap.
    steps = obs["blstats"].shape[0]
    done_mask = dones if steps == T else torch.cat([dones, torch.zeros_like(dones[:1])], dim=0)
    with forward_precision(actions.device, hp.bf16_autocast):
        logits, values, _ = net(obs, batch["core_state"], done_mask)
    if steps == T + 1:
        bootstrap_value = values[T].detach()
        logits, values = logits[:T], values[:T]
    elif steps == T:
        bootstrap_value = batch["bootstrap_value"]
    else:
        raise ValueError(f"obs has {steps} steps, expected T={T} or T+1")

    # V-trace with the learner's current policy and values as the target (ratio clamp applied).
    with torch.no_grad():
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        log_rho = (logp - behaviour_logp).clamp(math.log(hp.ratio_min), math.log(hp.ratio_max))
        vs, advantages = vtrace(behaviour_logp, behaviour_logp + log_rho, rewards.float(), values.float(),
                                bootstrap_value.float(), dones, hp.gamma, hp.rho_bar, hp.c_bar)

    loss, stats = appo_loss(logits, values, actions, behaviour_logp, old_values, vs, advantages, hp)
    _check_finite("loss", loss)

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [(n, p.grad) for n, p in params if p.grad is not None]
    grad_norm = nn.utils.get_total_norm([g for _, g in grads])  # checked before clipping scales it
    if not torch.isfinite(grad_norm):
        culprit = _first_nonfinite(grads)
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(f"gradient of {culprit} contains NaN/Inf" if culprit
                                 else "gradient norm overflowed to Inf")
    nn.utils.clip_grads_with_norm_([p for _, p in params], hp.max_grad_norm, grad_norm)
    optimizer.step()

    stats["grad_norm"] = grad_norm
    values_host = torch.stack([v.detach().float() for v in stats.values()]).tolist()  # one sync
    return dict(zip(stats.keys(), values_host))
