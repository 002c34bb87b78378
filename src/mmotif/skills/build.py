"""Build skill envs and their code policy from a run config."""

from __future__ import annotations

from pathlib import Path

from mmotif.config import GENERATED_TRAINING_POLICY, RunConfig
from mmotif.skills.code_policy import CodePolicy
from mmotif.skills.env import SkillEnv
from mmotif.skills.specs import SkillSet
from mmotif.skills.vector import VectorSkillEnv


def skill_set(cfg: RunConfig) -> SkillSet:
    return SkillSet(skills=tuple(cfg.skills))


def training_policy(cfg: RunConfig, seed: int) -> CodePolicy:
    """The code policy over skills named by `env.training_policy` (checked before any game):
    `env.training_policy_code` when set (`mmotif run` sets it), else the built-in or the file."""
    skills = skill_set(cfg)
    source = cfg.env.training_policy
    budget = cfg.env.policy_call_budget_s
    code = cfg.env.training_policy_code
    if code is not None:
        return CodePolicy.from_source(code, skills.names, skills.with_precondition(),
                                      name=f"training policy ({source})", seed=seed, budget_s=budget)
    if source == "builtin:exploration":
        return CodePolicy.exploration(skills.names, skills.with_precondition(), seed=seed, budget_s=budget)
    if source == GENERATED_TRAINING_POLICY:
        raise ValueError("env.training_policy: 'generate' is resolved by `mmotif run` (or write a file "
                         "with `mmotif skills-code` and name it)")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"env.training_policy: {source!r} is neither 'builtin:exploration' nor a file"
        )
    return CodePolicy.from_source(
        path.read_text(), skills.names, skills.with_precondition(),
        name=str(path), seed=seed, budget_s=budget,
    )


def make_skill_env(cfg: RunConfig, seed: int, caption_rate: float | None = None) -> SkillEnv:
    e = cfg.env
    return SkillEnv(
        skill_set(cfg), training_policy(cfg, seed), crop=e.crop,
        max_episode_steps=e.max_episode_steps, msg_max_keys=e.msg_max_keys,
        caption_rate=e.caption_rate if caption_rate is None else caption_rate,
        caption_gap=e.caption_gap, seed=seed,
    )


def make_vector_env(cfg: RunConfig, num_envs: int, seed: int) -> VectorSkillEnv:
    return VectorSkillEnv(lambda i: make_skill_env(cfg, seed * 10_007 + i), num_envs)
