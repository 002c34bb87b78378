"""The skill-environment stage of `mmotif run`: the training-time policy over skills
driving a vector of real NLE games with random low-level actions."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from mmotif.config import RunConfig
from mmotif.skills.build import make_vector_env


def skill_env_smoke(cfg: RunConfig, env_steps: int, num_envs: int = 4) -> dict:
    venv = make_vector_env(cfg, num_envs, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    usage: Counter[str] = Counter()
    names = [s.name for s in cfg.skills]
    try:
        venv.reset()
        t0 = time.perf_counter()
        for _ in range(max(1, env_steps // num_envs)):
            obs, _, _ = venv.step(rng.integers(venv.action_space.n, size=num_envs))
            usage.update(names[int(k)] for k in obs["skill"])
        elapsed = time.perf_counter() - t0
        episodes = venv.pop_finished_episodes()
        captions = venv.pop_captions()
    finally:
        venv.close()
    steps = sum(usage.values())
    return {
        "env_steps": steps,
        "env_steps_per_s": round(steps / elapsed, 1),
        "episodes_finished": len(episodes),
        "skill_usage": {k: round(v / steps, 3) for k, v in usage.most_common()},
        "captions_sampled": len(captions),
        "example_caption": captions[0].text if captions else None,
    }
