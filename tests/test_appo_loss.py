"""APPO loss pieces (clipping, value clipping, entropy, advantage normalisation) and learner_step."""

import math

import pytest
import torch

from mmotif.config import LearnerConfig
from mmotif.learners.appo import (appo_loss, learner_step, make_optimizer, normalize,
                                  policy_loss, value_loss)
from mmotif.models.network import SkillPolicyNet, local_sizes, mask_state

from test_network import random_obs

K = 5


def test_paper_defaults():
    hp = LearnerConfig()
    assert (hp.lr, hp.gamma, hp.clip_ratio, hp.value_clip, hp.value_coef, hp.entropy_coef) == (1e-4, 0.99, 0.1, 1.0, 0.5, 0.003)
    assert (hp.max_grad_norm, hp.rho_bar, hp.c_bar, hp.batch_size, hp.rollout) == (4.0, 1.0, 1.0, 4096, 32)
    assert (hp.ratio_min, hp.ratio_max, hp.adv_std_floor, hp.adam_eps) == (0.05, 20.0, 1e-3, 1e-6)


@pytest.mark.parametrize("ratio,adv,zero_grad", [
    (1.3, 1.0, True),    # above 1 + clip, positive advantage: no push further up
    (0.8, -1.0, True),   # below 1/(1 + clip), negative advantage: no push further down
    (1.3, -1.0, False),  # above the range but the advantage pulls it back: gradient flows
    (0.8, 1.0, False),
    (1.05, 1.0, False),  # inside [1/1.1, 1.1]
    (0.95, -1.0, False),
])
def test_policy_clip_gradients(ratio, adv, zero_grad):
    r = torch.tensor([ratio], requires_grad=True)
    policy_loss(r, torch.tensor([adv]), clip_ratio=0.1).backward()
    if zero_grad:
        assert r.grad.item() == 0.0
    else:
        assert r.grad.item() == pytest.approx(-adv)  # d(-ratio * adv)/d ratio


def _loss_grad_on_logits(log_ratio, adv, hp):
    """Gradient of appo_loss w.r.t. the logits of each sample, for the given log-ratios."""
    n = len(log_ratio)
    logits = torch.randn(n, 28, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    actions = torch.zeros(n, dtype=torch.long)
    logp = torch.log_softmax(logits.detach(), -1)[:, 0]
    behaviour_logp = logp - torch.tensor(log_ratio)
    zeros = torch.zeros(n)
    loss, _ = appo_loss(logits, zeros, actions, behaviour_logp, zeros, zeros, torch.tensor(adv), hp)
    loss.backward()
    return logits.grad.abs().sum(-1)


def test_clipped_samples_get_no_policy_gradient_through_appo_loss():
    hp = LearnerConfig(entropy_coef=0.0, normalize_advantages=False)
    # ratios 1.5 (adv +), 0.5 (adv -), 50 -> clamped to 20 (adv -), 1.0 (adv +)
    grad = _loss_grad_on_logits([math.log(1.5), math.log(0.5), math.log(50.0), 0.0], [1.0, -1.0, -1.0, 1.0], hp)
    assert grad[0] == 0 and grad[1] == 0 and grad[3] > 0
    assert grad[2] == 0  # the [0.05, 20] clamp cuts the gradient of an extreme ratio


def test_value_clipping():
    def grad(new, old, target):
        v = torch.tensor([new], requires_grad=True)
        value_loss(v, torch.tensor([old]), torch.tensor([target]), value_clip=1.0).backward()
        return v.grad.item()

    assert grad(0.5, 0.0, 5.0) == pytest.approx(2 * (0.5 - 5.0))  # inside the clip: plain MSE
    assert grad(2.0, 0.0, 5.0) == 0.0  # moved past old + 1 towards the target: clipped, no gradient
    assert grad(-3.0, 0.0, 5.0) == pytest.approx(2 * (-3.0 - 5.0))  # moved away: unclipped error dominates
    loss = value_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([5.0]), 1.0)
    assert loss.item() == pytest.approx((1.0 - 5.0) ** 2)  # pessimistic: the larger (clipped) error


def test_entropy_bonus_sign():
    hp = LearnerConfig(entropy_coef=0.5)
    n = 8
    zeros = torch.zeros(n)
    actions = torch.zeros(n, dtype=torch.long)
    peaked = torch.zeros(n, 28)
    peaked[:, 3] = 5.0
    uniform = torch.zeros(n, 28)
    # zero advantages: only the entropy term differs
    l_peaked, s_peaked = appo_loss(peaked, zeros, actions, torch.log_softmax(peaked, -1)[:, 0], zeros, zeros, zeros, hp)
    l_uniform, s_uniform = appo_loss(uniform, zeros, actions, torch.log_softmax(uniform, -1)[:, 0], zeros, zeros, zeros, hp)
    assert s_uniform["entropy"] == pytest.approx(math.log(28), rel=1e-5)
    assert l_uniform < l_peaked  # higher entropy, lower loss
    # one gradient step on the loss raises the entropy
    logits = peaked.clone().requires_grad_(True)
    loss, _ = appo_loss(logits, zeros, actions, torch.log_softmax(peaked, -1)[:, 0], zeros, zeros, zeros, hp)
    loss.backward()
    with torch.no_grad():
        stepped = logits - 1.0 * logits.grad
        ent = lambda z: -(z.softmax(-1) * z.log_softmax(-1)).sum(-1).mean()
        assert ent(stepped) > ent(peaked)


def test_advantage_normalisation():
    adv = torch.tensor([1.0, 2.0, 4.0, -3.0])
    norm = normalize(adv, 1e-3)
    assert norm.mean().abs() < 1e-6 and norm.std().item() == pytest.approx(1.0)
    tiny = torch.tensor([0.0, 1e-5])
    torch.testing.assert_close(normalize(tiny, 1e-3), (tiny - tiny.mean()) / 1e-3)  # std floored
    # the policy loss is invariant to an affine rescaling of the advantages
    hp = LearnerConfig(entropy_coef=0.0)
    logits = torch.randn(4, 28, generator=torch.Generator().manual_seed(1))
    actions = torch.tensor([0, 1, 2, 3])
    behaviour = torch.log_softmax(logits, -1).gather(1, actions[:, None])[:, 0] + 0.05 * torch.tensor([1.0, -1.0, 2.0, 0.0])
    zeros = torch.zeros(4)
    _, a = appo_loss(logits, zeros, actions, behaviour, zeros, zeros, adv, hp)
    _, b = appo_loss(logits, zeros, actions, behaviour, zeros, zeros, 10 * adv + 3, hp)
    assert a["policy_loss"].item() == pytest.approx(b["policy_loss"].item(), abs=1e-6)


def test_loss_stats_keys():
    hp = LearnerConfig()
    logits = torch.randn(3, 2, 28)
    actions = torch.zeros(3, 2, dtype=torch.long)
    z = torch.zeros(3, 2)
    _, stats = appo_loss(logits, z, actions, torch.log_softmax(logits, -1)[..., 0], z, z, torch.randn(3, 2), hp)
    for key in ("policy_loss", "value_loss", "entropy", "ratio_mean", "clip_fraction", "approx_kl"):
        assert key in stats
    assert stats["ratio_mean"].item() == pytest.approx(1.0) and stats["clip_fraction"].item() == 0.0
    assert stats["approx_kl"].item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------ learner_step
def make_net(seed=0):
    torch.manual_seed(seed)
    return SkillPolicyNet(K, sizes=local_sizes(), core_hidden=32, crop_hidden=32, message_dim=16,
                          message_channels=16, message_embed=8)


def make_batch(net, T=8, B=4, seed=0):
    """Roll the net's own policy over random observations: T steps plus the bootstrap obs."""
    torch.manual_seed(seed)
    obs = random_obs((T + 1, B), seed=seed)
    dones = torch.zeros(T, B, dtype=torch.bool)
    dones[3, 1] = True
    dones[T - 1, 2] = True
    state = net.initial_state(B)
    core_state = state.clone()
    actions, logps, values = [], [], []
    for t in range(T):
        a, lp, v, state = net.act({k: obs[k][t] for k in obs}, state)
        state = mask_state(state, dones[t])
        actions.append(a), logps.append(lp), values.append(v)
    return {
        "obs": obs, "actions": torch.stack(actions), "logp": torch.stack(logps).clone(),
        "values": torch.stack(values).clone(), "rewards": torch.randn(T, B, generator=torch.Generator().manual_seed(seed)),
        "dones": dones, "core_state": core_state,
    }


def test_learner_step_reduces_loss():
    net = make_net()
    batch = make_batch(net)
    hp = LearnerConfig(lr=1e-3)
    opt = make_optimizer(net, hp)
    losses = [learner_step(net, opt, batch, hp) for _ in range(12)]
    for key in ("loss", "policy_loss", "value_loss", "entropy", "ratio_mean", "clip_fraction", "approx_kl", "grad_norm"):
        assert math.isfinite(losses[0][key])
    assert losses[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # first step is on-policy
    assert losses[-1]["loss"] < losses[0]["loss"]
    assert losses[-1]["value_loss"] < losses[0]["value_loss"]


def test_learner_step_with_bootstrap_value():
    net = make_net()
    batch = make_batch(net)
    T = batch["actions"].shape[0]
    batch["obs"] = {k: v[:T] for k, v in batch["obs"].items()}
    batch["bootstrap_value"] = torch.zeros(batch["actions"].shape[1])
    hp = LearnerConfig()
    stats = learner_step(net, make_optimizer(net, hp), batch, hp)
    assert math.isfinite(stats["loss"])


def _snapshot(net):
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def _assert_unchanged(net, before):
    for n, p in net.named_parameters():
        assert torch.equal(p.detach(), before[n]) or (torch.isnan(before[n]).any() and
                                                       torch.equal(torch.isnan(p), torch.isnan(before[n])))


def test_nan_parameter_raises_and_leaves_parameters():
    net = make_net()
    batch = make_batch(net)
    hp = LearnerConfig()
    opt = make_optimizer(net, hp)
    with torch.no_grad():
        net.core.weight_hh_l0[0, 0] = float("nan")
    before = _snapshot(net)
    with pytest.raises(FloatingPointError, match="core.weight_hh_l0"):
        learner_step(net, opt, batch, hp)
    _assert_unchanged(net, before)


def test_nan_reward_raises_and_leaves_parameters():
    net = make_net()
    batch = make_batch(net)
    batch["rewards"][2, 1] = float("nan")
    hp = LearnerConfig()
    before = _snapshot(net)
    with pytest.raises(FloatingPointError, match="rewards"):
        learner_step(net, make_optimizer(net, hp), batch, hp)
    _assert_unchanged(net, before)


def test_inf_loss_raises_and_leaves_parameters():
    net = make_net()
    batch = make_batch(net)
    batch["rewards"][:] = 3e38  # finite inputs, but the squared value error overflows
    hp = LearnerConfig()
    before = _snapshot(net)
    with pytest.raises(FloatingPointError, match="loss"):
        learner_step(net, make_optimizer(net, hp), batch, hp)
    _assert_unchanged(net, before)


def test_nan_gradient_raises_and_leaves_parameters():
    net = make_net()
    batch = make_batch(net)
    hp = LearnerConfig()
    opt = make_optimizer(net, hp)
    net.actor.weight.register_hook(lambda g: g * float("nan"))
    before = _snapshot(net)
    with pytest.raises(FloatingPointError, match="gradient of actor.weight"):
        learner_step(net, opt, batch, hp)
    _assert_unchanged(net, before)
