"""Learning signal at small scale: does a bounded local run with a planted reward for going
down stairs produce a policy that descends more than a random one?

1. Plant the reward: a real reward model trained (Bradley-Terry, as in a run) on synthetic
   preferences: `deeper` prefers any moment below the skill's starting level, `descent`
   the moment showing "You descend the stairs.".
2. Train: `mmotif run` on the local preset with one skill (descender), annotation off,
   starting from the planted reward model, with this bench's learning settings
   (`--lr`, `--adv-std-floor`; bench/README.md says why).
3. Measure: deepest level per episode of the trained policy, of a uniformly random policy,
   and of i.i.d. actions with the trained policy's action frequencies; same env, same
   number of episodes; a one-sided permutation test on the mean.

Prints JSON. Takes about `--seconds` plus 1–3 minutes of evaluation.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmotif.config import RewardConfig, load_config
from mmotif.contract import LABEL_FIRST, Caption, CaptionPair, Preference
from mmotif.models.build import make_network
from mmotif.models.network import mask_state
from mmotif.nethack.actions import INDEX
from mmotif.rewards.training import fit_skill_reward
from mmotif.rewards.versions import publish
from mmotif.runtime.resume import load_checkpoint
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
    entry, report = fit_skill_reward("descender", prefs, RewardConfig(lr=1e-3, batch_size=64, min_steps=100),
                                     seed=seed, threshold_quantile=0.9 if kind == "descent" else 0.5)
    return Path(publish(root, [entry]).path)


def config(run_dir: Path, policy: Path, reward: Path | None, seconds: float, beta: float, entropy: float,
           adv_std_floor: float = 1e-3, lr: float = 3e-4):
    return load_config(preset_name="local", overrides={
        "skills": [{"name": "descender", "description": "Finds a down staircase and goes down.",
                    "preference": "Going down is progress."}],
        "env": {"training_policy": str(policy), "max_episode_steps": 1000},
        "annotator": {"num_annotators": 0},
        "evaluation": {"tasks": []},  # measured here instead
        "reward": {"models": str(reward) if reward else None, "beta": beta},
        "learner": {"entropy_coef": entropy, "adv_std_floor": adv_std_floor, "lr": lr},
        "time_limit_s": seconds,
        "paths": {"run_dir": str(run_dir)},
    })


def rollouts(cfg, net, episodes: int, envs: int, seed: int, probs: np.ndarray | None = None) -> dict:
    """Play `episodes` episodes with `net`; without one, i.i.d. actions drawn from `probs`
    (uniform by default)."""
    venv = make_vector_env(cfg, envs, seed)
    rng = np.random.default_rng(seed)
    obs = venv.reset()
    state = net.initial_state(envs) if net is not None else None
    finished: list[dict] = []
    action_counts = np.zeros(venv.action_space.n, np.int64)
    while len(finished) < episodes:
        if net is None:
            actions = rng.choice(venv.action_space.n, size=envs, p=probs)
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
    depths = [e.max_depth for e in finished]
    share = action_counts / action_counts.sum()
    return {"episodes": len(finished), "max_depths": depths, "action_probs": share.tolist(),
            "mean_max_depth": float(np.mean(depths)),
            "share_deeper_than_1": float(np.mean([d > 1 for d in depths])),
            "mean_episode_steps": float(np.mean([e.episode_steps for e in finished])),
            "action_share": {name: round(float(share[INDEX[name]]), 4) for name in ("DOWN", "PRAY", "WAIT")}}


def permutation_p_value(trained: list[int], random_: list[int], draws: int = 20_000, seed: int = 0) -> float:
    """One-sided permutation test: how often relabelling the episodes gives a mean-depth
    difference at least as large as the observed one."""
    a, b = np.asarray(trained, float), np.asarray(random_, float)
    both, n = np.concatenate([a, b]), len(a)
    observed = a.mean() - b.mean()
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(draws):
        perm = rng.permutation(both)
        hits += perm[:n].mean() - perm[n:].mean() >= observed
    return round((hits + 1) / (draws + 1), 4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=1200)
    p.add_argument("--episodes", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reward", choices=("deeper", "descent"), default="deeper",
                   help="deeper: every step below the starting level is rewarded (one skill for "
                        "the whole episode, beta 0: no message-count decay); descent: only the "
                        "step that descends (the skill restarts after each descent; beta 3)")
    p.add_argument("--entropy", type=float, default=0.003,
                   help="entropy bonus (the reference's 0.003 by default)")
    p.add_argument("--adv-std-floor", type=float, default=0.1,
                   help="advantages divided by max(batch std, this); 1e-3 is plain normalisation "
                        "(see bench/README.md for why this bench uses 0.1)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (local preset: 3e-4; reference: 1e-4)")
    p.add_argument("--evaluate-run", type=Path, default=None,
                   help="no training: evaluate the newest checkpoint of this run folder (a RUN_DIR printed before)")
    args = p.parse_args()
    t0 = time.time()
    if args.evaluate_run:
        run_dir = args.evaluate_run
        cfg = load_config(run_dir / "config.yaml")
        summary = {"env_steps": None}
    else:
        work = Path(tempfile.mkdtemp(prefix="mmotif-signal-"))
        run_dir = work / "run"
        policy = work / "descender_only.py"
        policy.write_text(DESCENDER_STAYS if args.reward == "deeper" else DESCENDER_ONLY)
        reward = planted_reward(work / "rewards", args.seed, args.reward)
        cfg = config(run_dir, policy, reward, args.seconds, beta=0.0 if args.reward == "deeper" else 3.0,
                     entropy=args.entropy, adv_std_floor=args.adv_std_floor, lr=args.lr)
        summary = Driver(cfg).run()
    learner_state, _ = load_checkpoint(run_dir, cfg)
    net = make_network(cfg)
    net.load_state_dict(learner_state["net"])
    net.eval()
    trained = rollouts(cfg, net, args.episodes, 16, args.seed + 1)
    random_ = rollouts(cfg, None, args.episodes, 16, args.seed + 1)
    # the trained policy's action frequencies without its observations: how much of the
    # difference comes from acting on what it sees rather than from shifted frequencies
    marginals = rollouts(cfg, None, args.episodes, 16, args.seed + 1, probs=np.array(trained["action_probs"]))
    p_value = permutation_p_value(trained.pop("max_depths"), random_.pop("max_depths"))
    marginals.pop("max_depths")
    for r in (trained, random_, marginals):
        r.pop("action_probs")
    print(json.dumps({
        "reward": ("deeper" if cfg.reward.beta == 0 else "descent") if args.evaluate_run else args.reward,
        "entropy_coef": cfg.learner.entropy_coef,
        "adv_std_floor": cfg.learner.adv_std_floor, "lr": cfg.learner.lr,
        "seconds": round(time.time() - t0, 1), "env_steps": summary["env_steps"] or learner_state["env_steps"],
        "trained": trained, "random": random_, "trained_action_frequencies_iid": marginals,
        "trained_descends_deeper": trained["mean_max_depth"] > random_["mean_max_depth"],
        "p_value_one_sided": p_value,
        "run_dir": str(run_dir),
    }, indent=2))


if __name__ == "__main__":
    main()
