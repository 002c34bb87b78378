"""Many skill envs stepped in one process, writing straight into batched arrays.

This is what a rollout actor drives: `step(actions)` plays one action in every env and
fills `obs` (B, ...) in place. An env whose episode ended is reset at once: its row then
holds the first observation of the next episode, `done[i]` is True, and the finished
episode's summary is appended to `finished_episodes`.

`reward_inputs` holds, for every env, what the reward models read of the observation that
*followed* the action (message, diffstats, msg_count), taken before any reset, so the
last step of an episode is rewarded on its real outcome.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from mmotif.contract import REWARD_INPUT_KEYS, Caption
from mmotif.skills.env import SkillEnv


class VectorSkillEnv:
    def __init__(self, make_env: Callable[[int], SkillEnv], num_envs: int):
        self.envs = [make_env(i) for i in range(num_envs)]
        first = self.envs[0]
        self.num_envs = num_envs
        self.obs = {
            k: np.zeros((num_envs, *space.shape), space.dtype)
            for k, space in first.observation_space.spaces.items()
        }
        self.rewards = np.zeros(num_envs, np.float32)
        self.dones = np.zeros(num_envs, bool)
        self.truncated = np.zeros(num_envs, bool)
        # v[i, ...] is a view even for per-env scalars (a 0-d array), so rows write in place
        self._rows = [{k: v[i, ...] for k, v in self.obs.items()} for i in range(num_envs)]
        self.reward_inputs = {k: np.zeros_like(self.obs[k]) for k in REWARD_INPUT_KEYS}
        self.finished_episodes: list[dict] = []

    @property
    def action_space(self):
        return self.envs[0].action_space

    def reset(self) -> dict[str, np.ndarray]:
        for env, row in zip(self.envs, self._rows):
            env.begin_episode()
            env.write_observation(row)
        self.dones[:] = False
        return self.obs

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        rewards, dones, truncated = self.rewards, self.dones, self.truncated
        for i, (env, row) in enumerate(zip(self.envs, self._rows)):
            reward, term, trunc = env.advance(int(actions[i]))
            rewards[i] = reward
            dones[i] = term or trunc
            truncated[i] = trunc
            env.write_observation(row)
            for key, arr in self.reward_inputs.items():
                arr[i] = row[key]
            if term or trunc:
                summary = env.info()
                summary["truncated"] = trunc
                self.finished_episodes.append(summary)
                env.begin_episode()
                env.write_observation(row)
        return self.obs, rewards, dones

    def pop_finished_episodes(self) -> list[dict]:
        finished, self.finished_episodes = self.finished_episodes, []
        return finished

    def pop_captions(self) -> list[Caption]:
        return [c for env in self.envs for c in env.pop_captions()]

    def pop_rebuilds(self) -> list[dict]:
        """Failed resets since the last call (see SkillEnv._reset_game), each with its env's index."""
        return [{"env": i, **record} for i, env in enumerate(self.envs) for record in env.pop_rebuilds()]

    def close(self) -> None:
        for env in self.envs:
            env.close()
