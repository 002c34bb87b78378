"""Raw NLE steps/s against the skill env with every feature on, random actions, one core.

Raw NLE is NLE's own gym env (NetHackScore-v0) restricted to the same 28 keys and the same
observation keys; the skill env adds the macros, prompt handling, features, message
counts, initiation/termination code and the policy over skills. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import gymnasium as gym
import nle  # noqa: F401  (registers the NetHack gym envs)
import numpy as np

from mmotif.config import preset
from mmotif.nethack import actions as A
from mmotif.nethack.game import OBS_KEYS
from mmotif.nethack.options import nethackrc_text, options_for_nle
from mmotif.skills.build import make_skill_env, make_vector_env


def raw_nle(steps: int, seed: int, num_envs: int = 1, options: tuple[str, ...] | None = None) -> float:
    """NLE's gym env; with num_envs > 1, that many games stepped round-robin (as a rollout
    actor does), which is slower per step than one game: each game has its own memory.
    `options`: NetHack options (None: NLE's defaults)."""
    extra = {} if options is None else {"options": options}
    envs = [gym.make("NetHackScore-v0", actions=A.ACTION_KEYS, observation_keys=OBS_KEYS,
                     max_episode_steps=10_000, **extra) for _ in range(num_envs)]
    rng = np.random.default_rng(seed)
    for env in envs:
        env.reset(seed=seed)
    rounds = steps // num_envs
    t0 = time.perf_counter()
    for _ in range(rounds):
        for env in envs:
            _, _, term, trunc, _ = env.step(int(rng.integers(A.NUM_ACTIONS)))
            if term or trunc:
                env.reset()
    rate = rounds * num_envs / (time.perf_counter() - t0)
    for env in envs:
        env.close()
    return rate


def same_game_options() -> tuple[str, ...]:
    """NLE options under which NLE's own gym env plays the skill env's game (Monk, no pet,
    no prayer confirmation, ...): mmotif's config file, under the name NLE's env looks for
    (it appends `name:Agent-<character>` to the options)."""
    (option,) = options_for_nle()
    Path(option[1:] + ",name:Agent-mon-hum-neu-mal").write_text(nethackrc_text())
    return (option,)


def skill_env(steps: int, seed: int) -> dict:
    env = make_skill_env(preset("paper"), seed)
    rng = np.random.default_rng(seed)
    env.reset()
    episodes = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(int(rng.integers(A.NUM_ACTIONS)))
        if term or trunc:
            env.reset()
            episodes += 1
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return {"steps_per_s": rate, "mean_episode_steps": steps / max(episodes, 1)}


def vector_env(steps: int, seed: int, num_envs: int) -> float:
    venv = make_vector_env(preset("paper"), num_envs, seed)
    rng = np.random.default_rng(seed)
    venv.reset()
    rounds = steps // num_envs
    t0 = time.perf_counter()
    for _ in range(rounds):
        venv.step(rng.integers(A.NUM_ACTIONS, size=num_envs))
    rate = rounds * num_envs / (time.perf_counter() - t0)
    venv.close()
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--envs", type=int, default=16, help="envs in the vector-env measurement")
    args = p.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # same single core for all
    same = same_game_options()
    raw = raw_nle(args.steps, args.seed)
    raw_same = raw_nle(args.steps, args.seed, options=same)
    single = skill_env(args.steps, args.seed)
    raw_many = raw_nle(args.steps, args.seed, args.envs)
    raw_many_same = raw_nle(args.steps, args.seed, args.envs, options=same)
    vector = vector_env(args.steps, args.seed, args.envs)
    rate = single["steps_per_s"]
    print(json.dumps({
        "steps": args.steps,
        "envs_in_vector": args.envs,
        "raw_nle_steps_per_s": round(raw, 1),
        "raw_nle_same_game_steps_per_s": round(raw_same, 1),
        "skill_env_steps_per_s": round(rate, 1),
        "skill_env_mean_episode_steps": round(single["mean_episode_steps"], 1),
        "ratio_skill_env": round(rate / raw, 3),
        "ratio_skill_env_same_game": round(rate / raw_same, 3),
        "raw_nle_round_robin_steps_per_s": round(raw_many, 1),
        "raw_nle_round_robin_same_game_steps_per_s": round(raw_many_same, 1),
        "vector_skill_env_steps_per_s": round(vector, 1),
        "ratio_vector_env": round(vector / raw_many, 3),
        "ratio_vector_env_same_game": round(vector / raw_many_same, 3),
        "target_ratio": 0.7,
    }, indent=2))


if __name__ == "__main__":
    main()
