"""The one episode loop of evaluation and replays, on a :class:`~mmotif.skills.vector.VectorSkillEnv`.

`play(venv, net)` acts with the frozen network in every env of the batch (sampled actions, or
argmax with `greedy`), zeroes the recurrent state of an env whose episode ended, and returns
when no env has an episode left. What an episode is comes from the env's hooks:
:class:`TaskEpisodes` plays a fixed number of episodes of a task (each env carries the task's
tracker as its task hook), numbered in the order they start, ends an episode once the tracker
is finished (beyond death and the step limit), records the first `record` of them as replays
and summarises each one as the tracker's result plus the episode's bookkeeping.

(The rollout worker, `mmotif.actors.rollout`, drives the same VectorSkillEnv with the default
hooks: endless episodes, fixed-length trajectories.)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import torch

from mmotif.evaluation.replay import EpisodeRecorder
from mmotif.models.network import mask_state
from mmotif.skills.env import SkillEnv
from mmotif.skills.vector import EpisodeHooks, VectorSkillEnv


def play(venv: VectorSkillEnv, net, greedy: bool = False) -> list[dict]:
    """Run `venv` with `net` until no env has an episode left (its hooks must stop restarting);
    the summaries of the finished episodes, in the order they ended."""
    obs = venv.reset()
    tensors = {k: torch.from_numpy(v) for k, v in obs.items()}  # share memory with the rows
    state = net.initial_state(venv.num_envs)
    finished: list[dict] = []
    while venv.running:
        actions, _, _, new_state = net.act(tensors, state, greedy=greedy)
        _, _, dones = venv.step(actions.numpy())
        state = mask_state(new_state, torch.from_numpy(dones))
        finished += venv.pop_finished_episodes()
    return finished


class TaskEpisodes(EpisodeHooks):
    """`episodes` episodes of `task` (a :class:`~mmotif.tasks.Task`) over the envs of a batch.

    Each env's `task` hook is its TaskTracker. The first `record` episodes are recorded (at most
    `max_frames` frames each) and, with `replay_dir`, saved there as
    `<task>_episode<NNN>.npz` (the summary's "replay"). `log` gets one line per finished
    episode (default: stderr)."""

    def __init__(self, task, episodes: int, skill_names, record: int = 0, max_frames: int = 10_001,
                 replay_dir: str | Path | None = None, log: Callable[[str], None] | None = None):
        self.task, self.episodes, self.record = task, int(episodes), int(record)
        self.skill_names, self.max_frames = tuple(skill_names), int(max_frames)
        self.replay_dir = Path(replay_dir) if replay_dir is not None else None
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.started_count = 0
        self.finished_count = 0
        self.episode_of: dict[int, int] = {}
        self.recorders: dict[int, EpisodeRecorder] = {}

    def started(self, i: int, env: SkillEnv) -> None:
        self.episode_of[i] = self.started_count
        if self.started_count < self.record:
            rec = EpisodeRecorder(self.skill_names, max_frames=self.max_frames)
            rec.frame(env.game, env.skill_id)
            self.recorders[i] = rec
        else:
            self.recorders.pop(i, None)
        self.started_count += 1

    def stepped(self, i: int, env: SkillEnv, action: int) -> bool:
        rec = self.recorders.get(i)
        if rec is not None:
            rec.action(action)
            rec.frame(env.game, env.skill_id)
        return env.task.finished

    def summary(self, i: int, env: SkillEnv, terminated: bool, truncated: bool) -> dict:
        tracker, stats, episode = env.task, env.stats, self.episode_of[i]
        result = tracker.result()
        result.update(
            episode=episode, died=bool(terminated and not result["escaped"]), truncated=bool(truncated and not terminated),
            ended_on_success=bool(tracker.finished), env_steps=stats.steps,
            skill_switches=stats.skill_switches, policy_errors=stats.policy_errors,
            last_policy_error=stats.last_policy_error, score=stats.score,
            skill_steps=dict(zip(self.skill_names, stats.skill_steps)),
        )
        rec = self.recorders.get(i)
        if rec is not None and self.replay_dir is not None:
            recording = rec.finish(task=self.task.name, episode=episode, result=result)
            result["replay"] = str(recording.save(self.replay_dir / f"{self.task.name}_episode{episode:03d}.npz"))
        self.finished_count += 1
        self.log(f"[{self.task.name}] episode {episode}: {result['steps']} steps, "
                 f"proxy {result['proxy']:g}, exact {result['exact']:g}"
                 + (" (died)" if result["died"] else "") + f"  [{self.finished_count}/{self.episodes}]")
        return result

    def another_episode(self, i: int) -> bool:
        return self.started_count < self.episodes
