"""The skill env as a registered gymnasium environment, for people who bring their own agent.

    import gymnasium
    import mmotif.skills.gym  # registers mmotif/Skill-v0 (or: make("mmotif.skills.gym:mmotif/Skill-v0"))

    env = gymnasium.make("mmotif/Skill-v0", preset="local", seed=0, sets=["env.max_episode_steps=500"])

One NetHack game whose skill is chosen by the config's code policy over skills
(call-and-return); the observation says which skill is active. The reward is the env's own
(the learned per-skill intrinsic rewards are applied by mmotif's learner, not here). The
registration lives here, not in `mmotif.skills`, so that importing mmotif does not import
gymnasium.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium

from mmotif.config import load_config
from mmotif.skills.build import make_skill_env
from mmotif.skills.env import SkillEnv

ENV_ID = "mmotif/Skill-v0"


def make_env(preset: str | None = None, config: str | None = None, sets: Sequence[str] = (),
             seed: int = 0, caption_rate: float | None = None) -> SkillEnv:
    """A skill env from a run config: a preset (`local` by default) and/or a YAML file, with
    `--set`-style overrides (`"env.crop=[9, 9]"`)."""
    cfg = load_config(config, preset_name=preset, sets=sets)
    return make_skill_env(cfg, seed, caption_rate=caption_rate)


if ENV_ID not in gymnasium.registry:
    # no TimeLimit wrapper: the env truncates at the config's env.max_episode_steps itself
    gymnasium.register(id=ENV_ID, entry_point=make_env, disable_env_checker=False)
