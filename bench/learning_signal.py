"""Learning signal at small scale: does a bounded local run with a planted reward for going
down stairs produce a policy that descends more than a random one?

1. Plant the reward: a real reward model trained (Bradley-Terry, as in a run) on synthetic
   preferences that always prefer "You descend the stairs." with a deeper level.
2. Train: `mmotif run` on the local preset with one skill (descender, re-selected after
   every descent), annotation off, starting from the planted reward model.
3. Measure: mean deepest level and descents per episode of the trained policy and of a
   uniformly random policy, same env, same number of episodes and steps.

Prints JSON. Takes about `--seconds` plus a minute.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmotif.config import load_config
from mmotif.contract import LABEL_FIRST, Caption, CaptionPair, Preference
from mmotif.learners.build import make_network
from mmotif.nethack.actions import INDEX
from mmotif.learners.network import mask_state
from mmotif.rewards.training import RewardTrainConfig, fit_skill_reward
from mmotif.rewards.versions import publish
from mmotif.runtime.checkpoint import load_checkpoint
from mmotif.runtime.driver import Driver
from mmotif.skills.build import make_vector_env

DESCENDER_ONLY = '''
class NetHackPlayer:
    def set_initial_values(self):
        self.skill = "descender"

    def skill_termination(self, skill, skill_time, depth, start_depth):
        return depth > start_depth

    def perform_task(self, current_skill, dungeon_depth, branch_number):
        return "descender"
'''

OTHER_MESSAGES = ["", "You kill the newt!", "It's a wall.", "You see here a scroll.", "The jackal bites!",
                  "You hear some noises.", "There is a staircase down here.", "You miss the rat."]


DESCENDER_STAYS = '''
class NetHackPlayer:
    def set_initial_values(self):
        self.skill = "descender"

    def skill_termination(self, skill, skill_time, depth, start_depth):
        return False

    def perform_task(self, current_skill, dungeon_depth, branch_number):
        return "descender"
'''


def planted_preferences(kind: str) -> list[Preference]:
    """`descent`: the step that shows "You descend the stairs." beats any other step.
    `deeper`: any step below the skill's starting level beats any step on it."""
    prefs = []
    for i in range(300):
        message = OTHER_MESSAGES[i % len(OTHER_MESSAGES)]
        if kind == "descent":
            better = Caption("went down", "You descend the stairs.", 1)
        else:
            better = Caption(f"deeper {i}", OTHER_MESSAGES[(i * 3 + 1) % len(OTHER_MESSAGES)], 1)
        worse = Caption(f"other {i}", message, 0)
        prefs.append(Preference(CaptionPair("descender", better, worse), LABEL_FIRST, "planted", "rule", "v1", 0.0))
    return prefs


def planted_reward(root: Path, seed: int, kind: str) -> Path:
    prefs = planted_preferences(kind)
    entry, report = fit_skill_reward("descender", prefs, RewardTrainConfig(lr=1e-3, batch_size=64, min_steps=100),
                                     seed=seed, threshold_quantile=0.9 if kind == "descent" else 0.5)
    return Path(publish(root, [entry]).path)


def config(run_dir: Path, policy: Path, reward: Path | None, seconds: float, beta: float, entropy: float,
           adv_std_floor: float = 1e-3):
    return load_config(preset_name="local", overrides={
        "skills": [{"name": "descender", "description": "Finds a down staircase and goes down.",
                    "preference": "Going down is progress."}],
        "env": {"training_policy": str(policy), "max_episode_steps": 1000},
        "annotator": {"num_annotators": 0},
        "evaluation": {"tasks": []},  # measured here instead
        "reward": {"models": str(reward) if reward else None, "beta": beta},
        "learner": {"entropy_coef": entropy, "adv_std_floor": adv_std_floor},
        "time_limit_s": seconds,
        "paths": {"run_dir": str(run_dir)},
    })


def rollouts(cfg, net, episodes: int, envs: int, seed: int) -> dict:
    """Play `episodes` episodes; net None plays uniformly random actions."""
    venv = make_vector_env(cfg, envs, seed)
    rng = np.random.default_rng(seed)
    obs = venv.reset()
    state = net.initial_state(envs) if net is not None else None
    finished: list[dict] = []
    action_counts = np.zeros(venv.action_space.n, np.int64)
    while len(finished) < episodes:
        if net is None:
            actions = rng.integers(venv.action_space.n, size=envs)
        else:
            tensors = {k: torch.from_numpy(v) for k, v in obs.items()}
            actions, _, _, state = net.act(tensors, state)
            actions = actions.numpy()
        np.add.at(action_counts, actions, 1)
        obs, _, dones = venv.step(actions)
        if net is not None:
            state = mask_state(state, torch.from_numpy(dones))
        finished += venv.pop_finished_episodes()
    venv.close()
    finished = finished[:episodes]
    depths = [e["max_depth"] for e in finished]
    share = action_counts / action_counts.sum()
    return {"episodes": len(finished), "mean_max_depth": float(np.mean(depths)),
            "share_deeper_than_1": float(np.mean([d > 1 for d in depths])),
            "mean_episode_steps": float(np.mean([e["episode_steps"] for e in finished])),
            "action_share": {name: round(float(share[INDEX[name]]), 4) for name in ("DOWN", "PRAY", "WAIT")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reward", choices=("deeper", "descent"), default="deeper",
                   help="deeper: every step below the starting level is rewarded (one skill for "
                        "the whole episode, beta 0: no message-count decay); descent: only the "
                        "step that descends (the skill restarts after each descent; beta 3)")
    p.add_argument("--entropy", type=float, default=0.003,
                   help="entropy bonus (the reference's 0.003 by default)")
    p.add_argument("--adv-std-floor", type=float, default=1e-3,
                   help="advantages divided by max(batch std, this); 1e-3 is plain normalisation")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mmotif-signal-"))
    policy = work / "descender_only.py"
    policy.write_text(DESCENDER_STAYS if args.reward == "deeper" else DESCENDER_ONLY)
    reward = planted_reward(work / "rewards", args.seed, args.reward)
    cfg = config(work / "run", policy, reward, args.seconds, beta=0.0 if args.reward == "deeper" else 3.0,
                 entropy=args.entropy, adv_std_floor=args.adv_std_floor)
    t0 = time.time()
    summary = Driver(cfg).run()
    learner_state, _ = load_checkpoint(work / "run", cfg)
    net = make_network(cfg)
    net.load_state_dict(learner_state["net"])
    net.eval()
    trained = rollouts(cfg, net, args.episodes, 16, args.seed + 1)
    random_ = rollouts(cfg, None, args.episodes, 16, args.seed + 1)
    print(json.dumps({
        "reward": args.reward, "entropy_coef": args.entropy, "adv_std_floor": args.adv_std_floor,
        "train_seconds": round(time.time() - t0, 1), "env_steps": summary["env_steps"],
        "trained": trained, "random": random_,
        "trained_descends_deeper": trained["mean_max_depth"] > random_["mean_max_depth"],
        "run_dir": str(work / "run"),
    }, indent=2))


if __name__ == "__main__":
    main()
