"""Many skill envs stepped in one process, writing straight into batched arrays.

This is what a rollout actor drives: `step(actions)` plays one action in every env and
fills `obs` (B, ...) in place. An env whose episode ended is reset at once: its row then
holds the first observation of the next episode, `done[i]` is True, and the finished
episode's summary is appended to `finished_episodes`.

`reward_inputs` holds, for every env, what the reward models read of the observation that
*followed* the action (message, diffstats, msg_count), taken before any reset, so the
last step of an episode is rewarded on its real outcome.

:class:`EpisodeHooks` decides what happens at the edges of episodes. Its defaults are the
rollout worker's (above); evaluation (`mmotif.evaluation.episodes`) overrides them: a task
reached ends an episode, the summary is the task's result, a fixed number of episodes is
played (an env with none left stands still: `active[i]` False, its row unchanged, `done[i]`
False) and episodes are recorded.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from mmotif.contract import REWARD_INPUT_KEYS, Caption, EnvRebuild
from mmotif.skills.env import SkillEnv


class EpisodeHooks:
    """What a VectorSkillEnv does at the edges of episodes (defaults: the rollout worker's)."""

    def started(self, i: int, env: SkillEnv) -> None:
        """Env i began an episode; its first observation is written."""

    def stepped(self, i: int, env: SkillEnv, action: int) -> bool:
        """Env i played `action` (before any reset); True ends its episode here (beyond death
        and the step limit)."""
        return False

    def summary(self, i: int, env: SkillEnv, terminated: bool, truncated: bool):
        """The record of env i's episode that just ended (goes to `finished_episodes`)."""
        return env.episode_summary(truncated)

    def another_episode(self, i: int) -> bool:
        """Whether env i starts an episode now (at reset and whenever one ends); False: it
        stands still from now on."""
        return True


class VectorSkillEnv:
    def __init__(self, make_env: Callable[[int], SkillEnv], num_envs: int, hooks: EpisodeHooks | None = None):
        self.envs = [make_env(i) for i in range(num_envs)]
        self.hooks = hooks or EpisodeHooks()
        self.active = np.ones(num_envs, bool)
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

    @property
    def running(self) -> bool:
        """Some env still plays an episode (always, unless the hooks stop restarting)."""
        return bool(self.active.any())

    def reset(self) -> dict[str, np.ndarray]:
        for i in range(self.num_envs):
            if self.hooks.another_episode(i):
                self._begin(i)
            else:
                self.active[i] = False
        self.dones[:] = False
        return self.obs

    def _begin(self, i: int) -> None:
        env = self.envs[i]
        env.begin_episode()
        env.write_observation(self._rows[i])
        self.active[i] = True
        self.hooks.started(i, env)

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        rewards, dones, truncated = self.rewards, self.dones, self.truncated
        active, hooks = self.active, self.hooks
        for i, (env, row) in enumerate(zip(self.envs, self._rows)):
            if not active[i]:
                rewards[i], dones[i], truncated[i] = 0.0, False, False
                continue
            action = int(actions[i])
            reward, term, trunc = env.advance(action)
            ended = hooks.stepped(i, env, action) or term or trunc
            rewards[i] = reward
            dones[i] = ended
            truncated[i] = trunc
            env.write_observation(row)
            for key, arr in self.reward_inputs.items():
                arr[i] = row[key]
            if ended:
                self.finished_episodes.append(hooks.summary(i, env, term, trunc))
                if hooks.another_episode(i):
                    self._begin(i)
                else:
                    active[i] = False
        return self.obs, rewards, dones

    def pop_finished_episodes(self) -> list[dict]:
        finished, self.finished_episodes = self.finished_episodes, []
        return finished

    def pop_captions(self) -> list[Caption]:
        return [c for env in self.envs for c in env.pop_captions()]

    def pop_rebuilds(self) -> list[EnvRebuild]:
        """Failed resets since the last call (see SkillEnv._reset_game), each with its env's index."""
        return [dataclasses.replace(record, env=i) for i, env in enumerate(self.envs) for record in env.pop_rebuilds()]

    def close(self) -> None:
        for env in self.envs:
            env.close()
