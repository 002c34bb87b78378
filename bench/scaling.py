"""Rollout scaling on this machine: env steps/s with 1 vs 2 Ray actors, and the efficiency.

Each actor holds a vector of skill envs (`mmotif.skills.build.make_vector_env`, the training
policy over skills, random low-level actions) and steps it for a fixed time; with two actors
they step at the same time and their rates add up. Efficiency = rate(2) / (2 * rate(1)).
Reports the efficiency in wall time (what the machine delivered) and per CPU-second granted
(`process_time`; removes contention from other processes on a shared machine), each the
median over `--repeats` alternating 1-actor/2-actor pairs. `--worker rollout` measures the rollout worker instead (`mmotif.actors.rollout.RolloutWorker`:
the same envs plus batched CPU inference of the policy network, T x B trajectories).

Ray is started locally with `--actors` logical CPUs and stopped at the end. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import ray

NOTE = (
    "Efficiency near 1.0 needs one free core per actor: env stepping is single-threaded "
    "CPU work and actors share nothing on the step path. On a node give each rollout actor one "
    "core (actors.threads_per_actor: 1), keep one or two cores per node for the raylet, "
    "object transfers and the learner/annotator (`mmotif.runtime.cluster.plan_actors` does), "
    "and expect per-node throughput ~= (cores - 1..2) x the one-actor rate here, minus memory-"
    "bandwidth effects on big nodes. On a shared or 2-core machine the 2-actor number also "
    "competes with the other processes (see load_avg): read it as a lower bound."
)


@ray.remote(num_cpus=1)
class Stepper:
    def __init__(self, worker: str, num_envs: int, seed: int, threads: int):
        import torch

        from mmotif.config import preset

        torch.set_num_threads(threads)
        cfg = preset("local")
        self.kind = worker
        if worker == "rollout":
            from mmotif.actors.rollout import RolloutWorker

            self.worker = RolloutWorker(cfg, actor_id=seed, seed=seed, num_envs=num_envs)
        else:
            import numpy as np

            from mmotif.skills.build import make_vector_env

            self.venv = make_vector_env(cfg, num_envs, seed)
            self.venv.reset()
            self.rng = np.random.default_rng(seed)
            self.n = self.venv.action_space.n

    def _chunk(self) -> int:
        if self.kind == "rollout":
            batch = self.worker.collect()
            return int(batch.actions.size)
        steps = 0
        for _ in range(16):
            self.venv.step(self.rng.integers(self.n, size=self.venv.num_envs))
            steps += self.venv.num_envs
        return steps

    def run(self, seconds: float, start_at: float) -> dict:
        while time.time() < start_at:  # both actors start stepping together
            time.sleep(0.001)
        self._chunk()  # warm-up (first rollout builds caches)
        steps, t0 = 0, time.perf_counter()
        cpu0 = time.process_time()
        while time.perf_counter() - t0 < seconds:
            steps += self._chunk()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        return {"steps": steps, "wall_s": wall, "cpu_s": cpu, "steps_per_s": steps / wall,
                "cpu_share": cpu / wall, "pid": os.getpid()}


def measure(num_actors: int, args) -> dict:
    actors = [Stepper.remote(args.worker, args.envs, args.seed + i, 1) for i in range(num_actors)]
    ray.get([a.__ray_ready__.remote() for a in actors])  # envs built before the clock starts
    start_at = time.time() + 1.0
    results = ray.get([a.run.remote(args.seconds, start_at) for a in actors])
    for a in actors:
        ray.kill(a)
    return {
        "actors": num_actors,
        "steps_per_s": round(sum(r["steps_per_s"] for r in results), 1),
        "per_actor_steps_per_s": [round(r["steps_per_s"], 1) for r in results],
        "per_actor_cpu_share": [round(r["cpu_share"], 2) for r in results],
        "steps_per_cpu_s": round(sum(r["steps"] for r in results) / sum(r["cpu_s"] for r in results), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=20.0, help="stepping time per measurement")
    p.add_argument("--envs", type=int, default=16, help="envs per actor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", choices=("env", "rollout"), default="env",
                   help="env: skill vector env, random actions; rollout: RolloutWorker.collect")
    p.add_argument("--repeats", type=int, default=1, help="alternate 1/2-actor runs this often")
    args = p.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        load_before = os.getloadavg()
        runs = []
        for _ in range(args.repeats):
            runs.append((measure(1, args), measure(2, args)))
        load_after = os.getloadavg()
    finally:
        ray.shutdown()
    wall_eff = sorted(b["steps_per_s"] / (2 * a["steps_per_s"]) for a, b in runs)
    cpu_eff = sorted(b["steps_per_cpu_s"] / a["steps_per_cpu_s"] for a, b in runs)
    median = lambda xs: xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
    one, two = runs[-1]
    print(json.dumps({
        "worker": args.worker,
        "envs_per_actor": args.envs,
        "seconds": args.seconds,
        "cpu_count": os.cpu_count(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
        "one_actor": one,
        "two_actors": two,
        # wall: what the machine delivered; cpu: per CPU-second actually granted, i.e. the
        # scaling cost of running actors side by side with contention from others removed
        "efficiency": round(median(wall_eff), 3),
        "efficiency_per_cpu_second": round(median(cpu_eff), 3),
        "all_runs": [{"one": a["steps_per_s"], "two": b["steps_per_s"],
                      "one_per_cpu_s": a["steps_per_cpu_s"], "two_per_cpu_s": b["steps_per_cpu_s"]}
                     for a, b in runs],
        "note": NOTE,
    }, indent=2))


if __name__ == "__main__":
    main()
