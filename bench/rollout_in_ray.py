"""CPU per env step of a rollout inside a Ray actor, with the run's ingredients added one at
a time: alone; beside a learner actor that trains on its rollouts; and also pulling fresh
weights from that learner before every rollout. Prints JSON.

    python bench/rollout_in_ray.py [--rollouts 60] [--repeats 2]

Compare with `train_throughput.py`'s `cpu_us_per_env_step` (inside a real run) and
`cpu_us_per_sample` (parts alone, outside Ray).
"""

from __future__ import annotations

import argparse
import json
import os

import ray

from mmotif.config import load_config

MODES = ("alone", "beside_learner", "beside_learner_pulling_weights")


@ray.remote(num_cpus=1)
class RolloutProbe:
    def __init__(self, config: dict):
        from mmotif.actors.rollout import RolloutWorker
        from mmotif.config import build_config

        self.worker = RolloutWorker(build_config(config, "probe"), 0, 0)

    def set_weights(self, version) -> None:
        self.worker.set_weights(version)

    def collect(self):
        return self.worker.collect()

    def cpu_seconds(self) -> float:
        t = os.times()
        return t.user + t.system


def cpu_us_per_step(cfg, mode: str, rollouts: int) -> float:
    from mmotif.learners.learner import Learner
    from mmotif.runtime.shells import LearnerActor

    data = cfg.model_dump(mode="json")
    probe = RolloutProbe.remote(data)
    learner = LearnerActor.options(num_cpus=1).remote(data) if mode != "alone" else None
    weights = ray.put(Learner(cfg).weights())
    ray.get(probe.set_weights.remote(weights))
    ray.get(probe.collect.remote())  # warm-up
    c0 = ray.get(probe.cpu_seconds.remote())
    steps, pending, ref = 0, [], None
    for _ in range(rollouts):
        if mode == "beside_learner_pulling_weights":
            weights = learner.weights.remote()
        probe.set_weights.remote(weights)
        ref = probe.collect.remote()
        if learner is None:
            ray.get(ref)
        else:
            pending.append(learner.add.remote(ref))
            if len(pending) > 2:
                ray.get(pending.pop(0))
        steps += cfg.learner.rollout * cfg.actors.envs_per_actor
    ray.get(ref)
    c1 = ray.get(probe.cpu_seconds.remote())
    for actor in (probe, learner):
        if actor is not None:
            ray.kill(actor)
    return (c1 - c0) / steps * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rollouts", type=int, default=60)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    cfg = load_config(preset_name="local", overrides={"annotator": {"num_annotators": 0}})
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    results = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            results[mode].append(round(cpu_us_per_step(cfg, mode, args.rollouts), 1))
    ray.shutdown()
    print(json.dumps({"rollouts": args.rollouts, "envs": cfg.actors.envs_per_actor, "T": cfg.learner.rollout,
                      "cpu_us_per_env_step": results}, indent=2))


if __name__ == "__main__":
    main()
