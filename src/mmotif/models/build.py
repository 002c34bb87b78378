"""Build the skill policy network from a run config."""

from __future__ import annotations

import dataclasses

from mmotif.config import RunConfig
from mmotif.models.network import SkillPolicyNet, local_sizes, paper_sizes


def make_network(cfg: RunConfig) -> SkillPolicyNet:
    net_cfg = cfg.learner.network
    sizes = paper_sizes() if net_cfg.size == "paper" else local_sizes()
    sizes = dataclasses.replace(sizes, **net_cfg.overrides())
    net = SkillPolicyNet(len(cfg.skills), crop=tuple(cfg.env.crop), sizes=sizes)
    net.set_shortcuts(net_cfg.shortcuts)
    return net
