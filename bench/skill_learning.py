"""Skill learning on a fixed yardstick: do bounded local runs of the whole loop make the
skills better than random at what their descriptions ask for?

For each annotator (`rules`: the rule-based control; `embedded`: the local preset's CPU
LLM) and each seed:

1. Train: `mmotif run` on the local preset (all five skills, the exploration policy over
   skills, annotation and reward-model retraining beside RL) for `--seconds`.
2. Measure: play `--episodes` episodes with the trained network and as many with uniformly
   random actions, under the same policy over skills and env settings, and compute every
   skill's competence rates per episode (`mmotif.skills.competence`: descents per 1,000
   descender steps, new cells and kills per 1,000 discoverer steps, ...), counting only
   episodes in which the skill acted for at least `--min-skill-steps` steps. The same again
   with each of `--held-skills` held for whole episodes (`competence_held_skill`), which
   measures skills the exploration schedule reaches only late.
3. Test: a one-sided permutation test of trained > random on the mean per-episode rate.

Prints one JSON object: per annotator, seed, skill and event the two means, the episode
counts and the p-value, plus the run's label and probe numbers. A skill that got too little
activity is reported as such, not dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmotif.config import load_config
from mmotif.models.build import make_network
from mmotif.models.network import mask_state
from mmotif.runtime.resume import load_checkpoint
from mmotif.runtime.driver import Driver
from mmotif.evaluation.report import read_metrics
from mmotif.skills.build import make_vector_env
from mmotif.skills.competence import PER_STEPS, SKILL_EVENTS


def train(annotator: str, seed: int, seconds: float, work: Path, overrides: dict, sets: list[str]):
    cfg = load_config(preset_name="local", sets=sets, overrides={
        **overrides,
        "seed": seed, "time_limit_s": seconds,
        "annotator": {**overrides.get("annotator", {}), "backend": annotator},
        "evaluation": {"tasks": []},  # measured here instead
        "paths": {"run_dir": str(work / f"{annotator}-seed{seed}")},
    })
    with contextlib.redirect_stdout(sys.stderr):  # the run's own lines; stdout is the JSON
        summary = Driver(cfg).run()
    return cfg, summary


def episodes_of(cfg, net, episodes: int, envs: int, seed: int) -> list[dict]:
    """Finished-episode summaries of `net` (None: uniformly random actions)."""
    venv = make_vector_env(cfg, envs, seed)
    rng = np.random.default_rng(seed)
    obs = venv.reset()
    state = net.initial_state(envs) if net is not None else None
    finished: list[dict] = []
    with torch.inference_mode():
        while len(finished) < episodes:
            if net is None:
                actions = rng.integers(venv.action_space.n, size=envs)
            else:
                actions, _, _, state = net.act({k: torch.from_numpy(v) for k, v in obs.items()}, state)
                actions = actions.numpy()
            obs, _, dones = venv.step(actions)
            if net is not None:
                state = mask_state(state, torch.from_numpy(dones))
            finished += venv.pop_finished_episodes()
    venv.close()
    return finished[:episodes]


HELD_SKILL_POLICY = """
class NetHackPlayer:
    def set_initial_values(self):
        self.skill = {skill!r}

    def skill_precondition(self, skill, view):
        return True

    def skill_termination(self, skill, skill_time, depth, start_depth, **preconditions):
        return False

    def perform_task(self, current_skill, dungeon_depth, branch_number, **preconditions):
        return {skill!r}
"""


def held_skill_config(cfg, skill: str, work: Path):
    """`cfg` with a policy over skills that runs `skill` for whole episodes.

    Under the exploration schedule the descender starts only after 500 game turns of the
    discoverer, which a policy that dies early (a uniform-random one prays itself to death
    in ~90 steps) never reaches: holding the skill measures it from the first step, for the
    trained network and the random policy alike."""
    path = work / f"held-{skill}.py"
    path.write_text(HELD_SKILL_POLICY.format(skill=skill))
    return cfg.model_copy(update={"env": cfg.env.model_copy(update={"training_policy": str(path)})})


def rates(episodes: list[dict], skill: str, event: str, min_steps: int) -> list[float]:
    """Per-episode rate of `event` per PER_STEPS steps of `skill`, where it acted enough."""
    out = []
    for e in episodes:
        steps = e.skill_steps.get(skill, 0)
        if steps >= min_steps:
            out.append(PER_STEPS * e.competence[skill][event] / steps)
    return out


def permutation_p_value(a: list[float], b: list[float], draws: int = 20_000, seed: int = 0) -> float:
    """One-sided: how often relabelling the episodes gives a mean difference >= observed."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    both, n = np.concatenate([x, y]), len(x)
    observed = x.mean() - y.mean()
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(both) for _ in range(draws)])
    hits = int(np.count_nonzero(perms[:, :n].mean(1) - perms[:, n:].mean(1) >= observed - 1e-12))
    return round((hits + 1) / (draws + 1), 5)


def compare(cfg, trained: list[dict], random_: list[dict], min_steps: int, min_episodes: int) -> dict:
    out = {}
    for skill in (s.name for s in cfg.skills):
        for event in SKILL_EVENTS.get(skill, ()):
            a, b = rates(trained, skill, event, min_steps), rates(random_, skill, event, min_steps)
            row = {"trained_episodes": len(a), "random_episodes": len(b)}
            if len(a) < min_episodes or len(b) < min_episodes:
                row["note"] = f"too little activity (< {min_episodes} episodes with {min_steps}+ skill steps)"
            else:
                row.update(trained_mean=round(float(np.mean(a)), 3), random_mean=round(float(np.mean(b)), 3),
                           p_value=permutation_p_value(a, b))
                row["beats_random_p01"] = row["p_value"] < 0.01
            out[f"{skill}:{event}"] = row
    return out


def mean_length(episodes: list) -> float:
    return round(float(np.mean([e.episode_steps for e in episodes])), 1)


def run_facts(run_dir: Path) -> dict:
    last: dict = {}
    for row in read_metrics(run_dir):
        last.update(row)
    keep = ("tie_share", "informative_labels_total", "reward_model_version")
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in last.items()
            if k in keep or k.startswith(("reward_probe_margin/", "tie_share/"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--annotators", nargs="+", default=["rules", "embedded"], choices=["rules", "embedded"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--seconds", type=float, default=1800, help="training time per run (at most 30 min)")
    p.add_argument("--episodes", type=int, default=96, help="evaluation episodes, trained and random each")
    p.add_argument("--max-episode-steps", type=int, default=1000, help="episode cap during evaluation")
    p.add_argument("--held-skills", nargs="*", default=["discoverer", "descender"],
                   help="skills also measured held for whole episodes (see held_skill_config)")
    p.add_argument("--min-skill-steps", type=int, default=50)
    p.add_argument("--min-episodes", type=int, default=10)
    p.add_argument("--lr", type=float, default=None, help="learner.lr (default: the local preset's)")
    p.add_argument("--adv-std-floor", type=float, default=None, help="learner.adv_std_floor (default: preset's)")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="any other config field, as `mmotif run --set` (applied after the bench's own)")
    args = p.parse_args()
    learner = {k: v for k, v in (("lr", args.lr), ("adv_std_floor", args.adv_std_floor)) if v is not None}
    overrides = {"learner": learner} if learner else {}
    work = Path(tempfile.mkdtemp(prefix="mmotif-skill-learning-"))
    results, t0 = [], time.time()
    for annotator in args.annotators:
        for seed in args.seeds:
            t = time.time()
            cfg, summary = train(annotator, seed, args.seconds, work, overrides, args.set)
            eval_cfg = cfg.model_copy(update={"env": cfg.env.model_copy(
                update={"max_episode_steps": args.max_episode_steps, "caption_rate": 0.0})})
            learner_state, _ = load_checkpoint(Path(cfg.paths.run_dir), cfg)
            net = make_network(cfg)
            net.load_state_dict(learner_state["net"])
            net.eval()
            trained = episodes_of(eval_cfg, net, args.episodes, 16, seed + 1000)
            random_ = episodes_of(eval_cfg, None, args.episodes, 16, seed + 1000)
            held = {}
            for skill in args.held_skills:
                held_cfg = held_skill_config(eval_cfg, skill, work)
                a = episodes_of(held_cfg, net, args.episodes, 16, seed + 2000)
                b = episodes_of(held_cfg, None, args.episodes, 16, seed + 2000)
                held[skill] = {k: v for k, v in compare(held_cfg, a, b, args.min_skill_steps,
                                                        args.min_episodes).items()
                               if k.startswith(f"{skill}:")}
                held[skill]["episode_steps"] = {"trained": mean_length(a), "random": mean_length(b)}
            results.append({
                "annotator": annotator, "seed": seed, "env_steps": summary["env_steps"],
                "train_seconds": args.seconds, "wall_s": round(time.time() - t, 1),
                "run": run_facts(Path(cfg.paths.run_dir)),
                "episode_steps": {"trained": mean_length(trained), "random": mean_length(random_)},
                "competence": compare(cfg, trained, random_, args.min_skill_steps, args.min_episodes),
                "competence_held_skill": held,
                "run_dir": str(cfg.paths.run_dir),
            })
    print(json.dumps({"bench": "skill_learning", "seconds": round(time.time() - t0, 1),
                      "episodes": args.episodes, "sets": args.set, "results": results}, indent=1))


if __name__ == "__main__":
    main()
