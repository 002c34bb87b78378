"""A/B of the network's exact optimisations, in one process, on real rollouts.

Each variant is a switch on the same `SkillPolicyNet` / `Learner` (the optimisation on, or
the reference path). Rounds alternate the variants (A B A B ...), so a busy machine slows
both alike; each measurement is CPU time (`time.process_time`, one torch thread) of

    act:   `SkillPolicyNet.act` over the T steps of a real rollout (B envs per call)
    learn: `Learner.train` on the run's batch (the rollouts just collected)

per sample. The acting policy loads new weights before each rollout, as a rollout actor
does (which empties the message cache). Printed: per variant the median and min..max over rounds, and the median (and
min..max) of the per-round ratio reference / optimised (> 1: the optimisation is faster).

Usage: python bench/network_ab.py [--network local|paper] [--rounds 7] [--seconds 1.5]
       [--switch distinct_messages cache_messages]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from mmotif.models.network import EXACT_SHORTCUTS as SWITCHES


def cpu_per_call(fn, seconds: float, min_calls: int = 2) -> float:
    fn()  # warm-up
    calls, c0, w0 = 0, time.process_time(), time.perf_counter()
    while calls < min_calls or time.perf_counter() - w0 < seconds:
        fn()
        calls += 1
    return (time.process_time() - c0) / calls


def summary(values: list[float], digits: int = 1) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", choices=("local", "paper"), default="local")
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    p.add_argument("--switch", nargs="+", choices=SWITCHES, default=list(SWITCHES),
                   help="the optimisations compared (all off vs all on; the others stay on)")
    args = p.parse_args()

    from mmotif.actors.rollout import RolloutWorker
    from mmotif.config import preset, with_overrides
    from mmotif.learners.learner import Learner

    torch.set_num_threads(1)
    cfg = with_overrides(preset("local"), {
        "annotator": {"num_annotators": 0}, "actors": {"envs_per_actor": args.envs},
        "learner": {"network": {"size": args.network}}}, "bench/network_ab.py")
    worker = RolloutWorker(cfg, 0, seed=0)
    T = cfg.learner.rollout
    batches = [worker.collect() for _ in range(max(1, math.ceil(cfg.learner.batch_size / (T * args.envs))))]
    worker.close()
    samples = sum(b.env_steps for b in batches)
    steps = [{k: torch.from_numpy(v[t].copy()) for k, v in batches[-1].obs.items()} for t in range(T)]
    net, state = worker.net, worker.net.initial_state(args.envs)
    learner = Learner(cfg)

    def act_rollout():
        net.load_state_dict(learner.net.state_dict())  # new weights each rollout, as in a run
        for obs in steps:
            net.act(obs, state)

    costs: dict[str, dict[str, list[float]]] = {part: {"on": [], "off": []} for part in ("act", "learn")}
    for _ in range(args.rounds):
        for variant in ("off", "on"):
            for target in (net, learner.net):
                target.set_shortcuts(variant == "on", tuple(args.switch))
            costs["act"][variant].append(cpu_per_call(act_rollout, args.seconds) / (T * args.envs) * 1e6)
            costs["learn"][variant].append(cpu_per_call(lambda: learner.train(batches), args.seconds) / samples * 1e6)

    out = {"switch": args.switch, "network": args.network, "envs": args.envs, "rounds": args.rounds,
           "learn_batch_samples": samples, "unit": "CPU us per sample"}
    for part, by_variant in costs.items():
        ratios = [off / on for off, on in zip(by_variant["off"], by_variant["on"])]
        out[part] = {"reference": summary(by_variant["off"]), "optimised": summary(by_variant["on"]),
                     "speedup": summary(ratios, digits=3)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
