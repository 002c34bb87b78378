"""The learner: APPO/V-trace on the shared skill network, with intrinsic rewards computed
here from the newest reward models (spec §4.6, §8).

`Learner` is the plain core; the Ray shell is `mmotif.runtime.shells.LearnerActor`.
Trajectories arrive as they come (asynchronous); once at least `batch_size` samples are
buffered they are concatenated along the env axis and used for one SGD step. Every step
publishes a new policy version.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from mmotif.config import RunConfig
from mmotif.contract import PolicyVersion, TrajectoryBatch, concat_batches
from mmotif.learners.appo import learner_step, make_optimizer
from mmotif.models.build import make_network
from mmotif.models.device import resolve_device
from mmotif.rewards.versions import RewardModelSet


class Learner:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.device = resolve_device("learner.device", cfg.learner.device)
        torch.manual_seed(cfg.seed)
        self.net = make_network(cfg).to(self.device)
        # bf16 autocast only where it pays (tensor cores); on CPU it is slower, so it stays off
        self.hp = cfg.learner if self.device.type == "cuda" else \
            cfg.learner.model_copy(update={"bf16_autocast": False})
        self.optimizer = make_optimizer(self.net, self.hp)
        self.skills = tuple(s.name for s in cfg.skills)
        self.rewards = RewardModelSet.constant(self.skills, device=self.device)
        self.policy_version = 0
        self.env_steps = 0
        self.updates = 0
        self.batches_dropped_for_lag = 0
        self._buffer: list[TrajectoryBatch] = []

    # -- versions ----------------------------------------------------------------------
    def set_reward_models(self, rewards: RewardModelSet) -> None:
        if rewards.skills != self.skills:
            raise ValueError(f"reward models are for {rewards.skills}, the run has {self.skills}")
        self.rewards = rewards.to(self.device)

    @property
    def reward_version(self) -> int:
        return -1 if self.rewards.version is None else int(self.rewards.version)

    def weights(self) -> PolicyVersion:
        state = {k: v.detach().cpu().numpy().copy() for k, v in self.net.state_dict().items()}
        return PolicyVersion(self.policy_version, state, self.env_steps)

    # -- learning ----------------------------------------------------------------------
    def add(self, batch: TrajectoryBatch) -> dict | None:
        """Buffer a rollout; train once enough samples are in. Returns stats after a step.
        A rollout acted by a policy more than `max_policy_lag` versions old is dropped."""
        if self.policy_version - batch.policy_version > self.cfg.learner.max_policy_lag:
            self.batches_dropped_for_lag += 1
            return None
        self._buffer.append(batch)
        if sum(b.env_steps for b in self._buffer) < self.hp.batch_size:
            return None
        batches, self._buffer = self._buffer, []
        return self.train(batches)

    def train(self, batches: list[TrajectoryBatch]) -> dict:
        data = concat_batches(batches)
        t = {k: torch.from_numpy(v).to(self.device) for k, v in data.items() if k != "obs"}
        obs = {k: torch.from_numpy(v).to(self.device) for k, v in data["obs"].items()}
        T = t["actions"].shape[0]
        acting_skill = obs["skill"][:T]
        with torch.no_grad():
            intrinsic = self.rewards.intrinsic_reward(
                t["next_message"], t["next_diffstats"], acting_skill, t["next_msg_count"],
                beta=self.cfg.reward.beta, coef=self.cfg.reward.coef, bound=self.cfg.reward.bound,
            )
        rewards = intrinsic + self.cfg.reward.extrinsic_coef * t["env_rewards"]
        if self.updates == self.cfg.faults.nan_reward_at_update:
            rewards[0, 0] = float("nan")  # injected fault: learner_step must refuse this batch
        step_batch = {
            "obs": obs, "actions": t["actions"], "logp": t["logp"], "values": t["values"],
            "rewards": rewards, "dones": t["dones"], "core_state": t["core_state"],
        }
        stats = learner_step(self.net, self.optimizer, step_batch, self.hp)
        samples = int(t["actions"].numel())
        self.env_steps += samples
        self.updates += 1
        self.policy_version += 1
        stats.update(self._reward_stats(intrinsic, acting_skill))
        stats["policy_lag"] = float(np.mean([self.policy_version - 1 - b.policy_version for b in batches]))
        stats["policy_version"] = self.policy_version
        stats["reward_model_version"] = self.reward_version
        stats["env_steps"] = self.env_steps
        stats["batches_dropped_for_lag"] = self.batches_dropped_for_lag
        stats["samples"] = samples
        return stats

    def _reward_stats(self, intrinsic: torch.Tensor, skill: torch.Tensor) -> dict:
        """Per-skill mean intrinsic reward per step and usage share, for the metrics."""
        k = len(self.skills)
        flat_skill = skill.reshape(-1).long()
        counts = torch.bincount(flat_skill, minlength=k).float()
        sums = torch.zeros(k, device=intrinsic.device).index_add_(0, flat_skill, intrinsic.reshape(-1).float())
        counts_l, sums_l = counts.tolist(), sums.tolist()
        total = max(sum(counts_l), 1.0)
        out = {"intrinsic_reward_mean": float(intrinsic.mean())}
        for name, n, s in zip(self.skills, counts_l, sums_l):
            out[f"skill_usage/{name}"] = n / total
            if n:
                out[f"skill_reward/{name}"] = s / n
        return out

    # -- checkpoints -------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to continue exactly: weights, optimiser, counters, RNG states."""
        return {
            "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "policy_version": self.policy_version,
            "env_steps": self.env_steps,
            "updates": self.updates,
            "batches_dropped_for_lag": self.batches_dropped_for_lag,
            "reward_model_version": self.reward_version,
            # only tensors and plain Python values: checkpoints are read with
            # torch.load(weights_only=True), which refuses numpy (or any other) objects
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": _numpy_rng_state(),
                "python": random.getstate(),  # (version, tuple of ints, gauss_next): plain values
            },
        }

    def load_state(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.policy_version = int(state["policy_version"])
        self.env_steps = int(state["env_steps"])
        self.updates = int(state["updates"])
        self.batches_dropped_for_lag = int(state.get("batches_dropped_for_lag", 0))  # older checkpoints lack it
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        _set_numpy_rng_state(rng["numpy"])
        random.setstate(tuple(rng["python"]))


def _numpy_rng_state() -> dict:
    """numpy's global MT19937 state with its key as an int64 tensor (not an ndarray)."""
    state = np.random.get_state(legacy=False)
    key = torch.from_numpy(state["state"]["key"].astype(np.int64))
    return {"bit_generator": state["bit_generator"], "state": {"key": key, "pos": int(state["state"]["pos"])},
            "has_gauss": int(state["has_gauss"]), "gauss": float(state["gauss"])}


def _set_numpy_rng_state(state) -> None:
    if isinstance(state, dict):
        key = state["state"]["key"]
        key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
        state = {**state, "state": {**state["state"], "key": key.astype(np.uint32)}}
    np.random.set_state(state)  # a dict, or the legacy tuple of checkpoints before the dict form


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
