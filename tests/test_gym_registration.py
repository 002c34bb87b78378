"""The skill env through gymnasium's registry, as a user with their own agent would use it."""

from __future__ import annotations

import subprocess
import sys

import gymnasium
import numpy as np

import mmotif.skills.gym  # noqa: F401  (registers mmotif/Skill-v0)


def test_gymnasium_make_builds_a_skill_env_that_steps():
    env = gymnasium.make("mmotif/Skill-v0", seed=1, sets=["env.max_episode_steps=50"])
    try:
        obs, info = env.reset(seed=3)
        assert env.observation_space.contains(obs)
        assert env.unwrapped.max_episode_steps == 50
        for _ in range(5):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert env.observation_space.contains(obs) and np.isfinite(reward)
            if terminated or truncated:
                obs, info = env.reset()
    finally:
        env.close()


def test_the_module_prefix_form_registers_in_a_fresh_interpreter():
    code = ("import gymnasium; env = gymnasium.make('mmotif.skills.gym:mmotif/Skill-v0'); "
            "print(env.spec.id); env.close()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("mmotif/Skill-v0")
