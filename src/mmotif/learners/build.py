"""Build the skill network and APPO hyperparameters from a run config."""

from __future__ import annotations

import dataclasses

from mmotif.config import RunConfig
from mmotif.learners.appo import APPOHyperparams
from mmotif.learners.network import SkillPolicyNet, local_sizes, paper_sizes


def make_network(cfg: RunConfig) -> SkillPolicyNet:
    net_cfg = cfg.learner.network
    sizes = paper_sizes() if net_cfg.size == "paper" else local_sizes()
    sizes = dataclasses.replace(sizes, **net_cfg.overrides())
    net = SkillPolicyNet(len(cfg.skills), crop=tuple(cfg.env.crop), sizes=sizes)
    net.set_shortcuts(net_cfg.shortcuts)
    return net


def appo_hyperparams(cfg: RunConfig) -> APPOHyperparams:
    lc = cfg.learner
    return dataclasses.replace(
        APPOHyperparams(),
        lr=lc.lr, gamma=lc.gamma, entropy_coef=lc.entropy_coef, value_coef=lc.value_coef,
        clip_ratio=lc.clip_ratio, value_clip=lc.value_clip, max_grad_norm=lc.max_grad_norm,
        rollout_len=lc.rollout, batch_size=lc.batch_size,
        normalize_advantages=lc.normalize_advantages, adv_std_floor=lc.adv_std_floor,
    )
