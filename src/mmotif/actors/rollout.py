"""Rollout worker: many skill envs, batched CPU inference of a policy copy, fixed-shape
trajectories (sample-factory's rollout + inference roles in one process).

`RolloutWorker` is the plain core (tested without Ray); `RolloutActor` in
`mmotif.actors.ray_actors` is the thin Ray shell around it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import torch

from mmotif.config import RunConfig
from mmotif.contract import PolicyVersion, RolloutSideLog, TrajectoryBatch
from mmotif.models.build import make_network
from mmotif.models.network import SkillPolicyNet, mask_state
from mmotif.skills.build import make_vector_env


class RolloutWorker:
    def __init__(self, cfg: RunConfig, actor_id: int, seed: int, num_envs: int | None = None):
        torch.set_num_threads(cfg.actors.threads_per_actor)
        torch.manual_seed(seed)
        self.actor_id = actor_id
        self.T = cfg.learner.rollout
        self.venv = make_vector_env(cfg, num_envs or cfg.actors.envs_per_actor, seed)
        if actor_id == 0 and cfg.faults.reset_fails_at_attempt:
            self.venv.envs[0].inject_reset_failures(cfg.faults.reset_fails_at_attempt, cfg.faults.reset_fails_times)
        self.net: SkillPolicyNet = make_network(cfg).eval()
        self.policy_version = -1
        self._obs = self.venv.reset()
        self._obs_t = {k: torch.from_numpy(v) for k, v in self._obs.items()}  # shares memory
        self._state = self.net.initial_state(self.venv.num_envs)
        self.env_steps = 0
        last = actor_id == (cfg.actors.num_actors - 1 if isinstance(cfg.actors.num_actors, int) else 0)
        self._crash_at = list(cfg.faults.crash_rollout_at_steps) if actor_id == 0 else []
        self._stall_at = list(cfg.faults.stall_rollout_at_steps) if last else []
        self._stall_seconds = cfg.faults.stall_seconds

    def reseed(self, seed: int) -> None:
        """New action-sampling and caption-sampling seeds (after a restart). A restarted
        actor is a new process: injected faults belonged to its first life."""
        self._crash_at, self._stall_at = [], []
        self.venv.envs[0].inject_reset_failures(0, 0)
        torch.manual_seed(seed)
        for i, env in enumerate(self.venv.envs):
            env.reseed(seed * 10_007 + i)

    def set_weights(self, version: PolicyVersion) -> None:
        if version.version <= self.policy_version:
            return
        self.net.load_state_dict({k: torch.tensor(v) for k, v in version.weights.items()})
        self.policy_version = version.version

    def collect(self) -> TrajectoryBatch:
        T = self.T
        batch = TrajectoryBatch.allocate(T, self._obs, self._state.clone().numpy(), self.policy_version, self.actor_id)
        next_inputs = {k: getattr(batch, f"next_{k}") for k in self.venv.reward_inputs}
        for t in range(T):
            for k, v in self._obs.items():
                batch.obs[k][t] = v
            action, lp, value, state = self.net.act(self._obs_t, self._state)
            batch.actions[t], batch.logp[t], batch.values[t] = action.numpy(), lp.numpy(), value.numpy()
            _, batch.env_rewards[t], batch.dones[t] = self.venv.step(batch.actions[t])
            for k, v in self.venv.reward_inputs.items():
                next_inputs[k][t] = v
            self._state = mask_state(state, torch.from_numpy(batch.dones[t]))
        for k, v in self._obs.items():
            batch.obs[k][T] = v
        self.env_steps += batch.env_steps
        self._inject_faults()
        return batch

    def pop_side_log(self) -> RolloutSideLog:
        """Episodes finished, captions sampled and failed resets since the last call."""
        rebuilds = [dataclasses.replace(r, actor=self.actor_id) for r in self.venv.pop_rebuilds()]
        return RolloutSideLog(self.venv.pop_finished_episodes(), self.venv.pop_captions(), rebuilds)

    def _inject_faults(self) -> None:
        """Configured faults (soak/recovery tests): die like a NetHack segfault, or hang."""
        done_before = self.env_steps - self.T * self.venv.num_envs
        crossed = lambda marks: any(done_before < m <= self.env_steps for m in marks)  # noqa: E731
        if crossed(self._crash_at):
            os.kill(os.getpid(), signal.SIGSEGV)
        if crossed(self._stall_at):
            time.sleep(self._stall_seconds)

    def close(self) -> None:
        self.venv.close()
