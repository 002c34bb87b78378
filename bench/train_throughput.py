"""End-to-end training throughput of `mmotif run` against the bound set by its own parts.

Prints JSON with three things:

(a) **end_to_end**: env steps/s of a real run: `Driver(cfg).run()` with the `local` preset,
    annotation off (`annotator.num_annotators: 0`), `--seconds` of training, in a temporary
    run folder. The rate is the steady state, read from the run's `metrics.jsonl` (one row
    per learner step: `env_steps_total`, `time`): rows of the first `--warmup` seconds after
    the first learner step are dropped, so Ray's start-up, actor construction and the first
    rollout are not counted. `window_rates` are the rates of consecutive ~10 s windows of
    the steady part (the spread inside one run).

(b) **bound**: what the same network could reach on the same cores if env stepping, acting
    (batched inference) and learning were perfectly overlapped and split across the cores,
    with no cost for moving data. Each part is measured alone in this process with one torch
    thread (a rollout actor and the learner each run with one thread), as CPU seconds per
    env step (sample), from `time.process_time()` so that other users of the machine inflate
    it as little as possible:

        c_env   = CPU s per step of the vector skill env (`--envs` envs, random actions)
        c_act   = CPU s per sample of `SkillPolicyNet.act` on batches of `--envs` observations,
                  T consecutive steps of the env (random actions), the weights reloaded
                  before each T steps as a rollout actor does (this empties the network's
                  encoding caches, which a fixed observation would hit every time)
        c_learn = CPU s per sample of `Learner.train` on T x B batches of the run's shapes
                  (T = learner.rollout, batch = learner.batch_size samples; includes the
                  intrinsic reward from a reward model per skill, V-trace, forward, backward,
                  Adam step; `cpu_constant_rewards`: the same before any reward version)

        bound = cores / (c_env + c_act + c_learn)          [env steps/s]

    Every env step costs one env step, one acting sample and one learning sample; with
    `cores` cores busy all the time on nothing else, that many CPU-seconds per second divide
    by the CPU-seconds per step. Nothing can beat it without making a part cheaper.
    Also reported: `split_bound` = min(1 / (c_env + c_act), 1 / c_learn) x (cores / 2), the
    bound of the actual placement on 2 cores (one rollout actor on one core, the learner on
    the other) where neither side can lend the other its idle time;
    `bound_with_measured_rollout` = cores / (c_rollout + c_learn), with the measured cost of a
    whole rollout (env + act + trajectory buffers) in place of c_env + c_act; `network_only_samples_per_s`
    = 1 / (c_act + c_learn) per core; and a measured rollout (`RolloutWorker.collect`:
    env + act + buffer copies, one core) as a check that c_env + c_act adds up.

(c) **ratio** = end_to_end steady rate / bound (the target is >= 0.8).

On a shared machine the run gets less than `cores` cores: the end-to-end rate is wall-clock
and suffers from other users' load, the bound (CPU time) much less, so a busy machine makes
`ratio` pessimistic. So the run's process tree (driver, GCS, raylet, Ray workers, agents:
all descendants of this process) is sampled from /proc during the steady window:
`steady_cpu.cores_used` is what it actually got, `cores_by_process` where it went, and

    ratio_per_cpu_s = (steady rate / cores_used) / (bound / cores)

is the share of the run's CPU time that did env + act + learn work (overheads: Ray, data
movement, the driver, copies). It equals `ratio` when the run has the cores to itself and
keeps them all busy; on a busy machine it is the better estimate of the system's own
overhead, but it cannot see cores left idle by a lack of overlap. `machine_busy_before` is
the share of all cores busy before the run started (other users). Run it a few times and
look at the spread.

Usage: python bench/train_throughput.py [--network local|paper] [--seconds 60] [--envs 16]
       python bench/train_throughput.py --only e2e|bound [--reference-network]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


# ----------------------------------------------------------------------------- helpers
def machine_busy(interval: float = 2.0) -> float:
    """Share of all cores busy (any process) over `interval` seconds, from /proc/stat."""
    def read():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle
    try:
        t0, i0 = read()
        time.sleep(interval)
        t1, i1 = read()
    except OSError:
        return float("nan")
    return round(1.0 - (i1 - i0) / max(t1 - t0, 1), 3)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, float, str]]:
    """pid -> (ppid, CPU seconds incl. reaped children, name) for every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        cpu = sum(int(x) for x in rest[11:15]) / _TICK  # utime stime cutime cstime
        table[int(entry)] = (int(rest[1]), cpu, _proc_name(argv, entry))
    return table


def _proc_name(argv: list[bytes], pid: str = "") -> str:
    if not any(argv) and pid:  # a process title that left no argv: fall back to comm
        try:
            with open(f"/proc/{pid}/comm") as f:
                return f.read().strip() or "?"
        except OSError:
            return "?"
    first = argv[0].decode(errors="replace") if argv else ""
    if first.startswith("ray::"):  # a Ray worker: its actor class (or IDLE)
        m = re.match(r"ray::([A-Za-z_]+)", first)
        return "ray::" + (m.group(1) if m else "?")
    words = [a.decode(errors="replace") for a in argv if a]
    if not words:
        return "?"
    base = os.path.basename(words[0].split()[0])
    if base.startswith("python") and len(words) > 1:
        script = next((w for w in words[1:] if w.endswith(".py")), words[1])
        return os.path.basename(script)
    return base


class TreeCpu:
    """CPU seconds used by this process and all its descendants (Ray's GCS, raylet, workers
    and agents are children of the driver that started Ray), sampled every `interval` s by a
    thread. `window(ta, tb)` tells how many cores the tree used between two times, in all
    and per process name: the share of the machine the run actually got (other users of a
    shared machine take the rest) and where it went."""

    def __init__(self, interval: float = 1.0, root: int | None = None):
        self.root = root or os.getpid()
        self.interval = interval
        self.samples: list[tuple[float, dict[int, tuple[str, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        tree, todo = {}, [self.root]
        while todo:
            pid = todo.pop()
            if pid in table and pid not in tree:
                _, cpu, name = table[pid]
                tree[pid] = ("driver" if pid == self.root else name, cpu)
                todo.extend(children.get(pid, []))
        self.samples.append((time.time(), tree))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def window(self, ta: float, tb: float) -> dict | None:
        inside = [s for s in self.samples if ta - self.interval <= s[0] <= tb + self.interval]
        if len(inside) < 2:
            return None
        (t0, start), (t1, _) = inside[0], inside[-1]
        dt = max(t1 - t0, 1e-9)
        # each process from its first to its last sample: one that exits inside the window
        # (the driver kills the rollout actors as the run ends) still counts
        last: dict[int, tuple[str, float]] = {}
        for _, tree in inside:
            last.update(tree)
        by_name: dict[str, float] = {}
        for pid, (name, cpu) in last.items():
            used = cpu - start[pid][1] if pid in start else cpu
            by_name[name] = by_name.get(name, 0.0) + max(used, 0.0)
        total = sum(by_name.values())
        top = sorted(by_name.items(), key=lambda kv: -kv[1])
        return {"cpu_s": round(total, 1), "cores_used": round(total / dt, 2),
                "cores_by_process": {k: round(v / dt, 2) for k, v in top if v / dt >= 0.01}}


@contextlib.contextmanager
def stdout_to_stderr():
    """Send fd 1 (progress lines, Ray's worker logs, child processes) to stderr meanwhile,
    so that stdout carries only the JSON."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def bench_config(network: str, envs: int, seconds: float | None = None, run_dir: str | None = None,
                 shortcuts: bool = True, actors: int = 1):
    from mmotif.config import preset, with_overrides

    overrides: dict = {
        "annotator": {"num_annotators": 0},
        "actors": {"num_actors": actors, "envs_per_actor": envs},
        "learner": {"network": {"size": network, "shortcuts": shortcuts}},
    }
    if seconds is not None:
        overrides["time_limit_s"] = seconds
    if run_dir is not None:
        overrides["paths"] = {"run_dir": run_dir}
    return with_overrides(preset("local"), overrides, "bench/train_throughput.py")


def steady_rate(rows: list[dict], warmup: float, window: float = 10.0) -> dict:
    """Steady-state env steps/s from (time, env_steps_total) rows of metrics.jsonl."""
    pts = sorted((r["time"], r["env_steps_total"]) for r in rows if "env_steps_total" in r)
    if len(pts) < 2:
        return {"steady_env_steps_per_s": None, "steady_rows": len(pts)}
    t_first = pts[0][0]
    steady = [p for p in pts if p[0] >= t_first + warmup]
    if len(steady) < 2:  # a run too short for the warm-up: use its second half
        steady = pts[len(pts) // 2:] if len(pts) >= 4 else pts
    (ta, sa), (tb, sb) = steady[0], steady[-1]
    windows, start = [], steady[0]
    for p in steady[1:]:
        if p[0] - start[0] >= window:
            windows.append((p[1] - start[1]) / (p[0] - start[0]))
            start = p
    return {
        "window": (ta, tb),
        "steady_env_steps_per_s": round((sb - sa) / max(tb - ta, 1e-9), 1),
        "steady_seconds": round(tb - ta, 1),
        "steady_env_steps": int(sb - sa),
        "window_rates": [round(w, 1) for w in windows],
        "first_learner_step_after_s": None,  # filled by the caller
    }


# ------------------------------------------------------------------------ (a) end to end
def end_to_end(network: str = "local", seconds: float = 60.0, envs: int = 16, warmup: float = 15.0,
               shortcuts: bool = True, actors: int = 1) -> dict:
    """A real `mmotif run` (local preset, no annotation) for `seconds`; its steady rate."""
    import ray

    from mmotif.models.build import make_network
    from mmotif.models.layers import num_parameters
    from mmotif.runtime.driver import Driver

    with tempfile.TemporaryDirectory(prefix="mmotif-bench-") as tmp:
        cfg = bench_config(network, envs, seconds=seconds, run_dir=str(Path(tmp) / "run"), shortcuts=shortcuts,
                           actors=actors)
        busy_before = machine_busy()
        t0 = time.time()
        with stdout_to_stderr(), TreeCpu() as cpu:
            try:
                summary = Driver(cfg, with_annotation=False).run()
            finally:
                ray.shutdown()
        rows = [json.loads(line) for line in (Path(cfg.paths.run_dir) / "metrics.jsonl").read_text().splitlines()]
    out = steady_rate(rows, warmup)
    window = out.pop("window", None)
    out["steady_cpu"] = cpu.window(*window) if window else None
    if out["steady_cpu"] and out["steady_env_steps_per_s"]:
        rate = out["steady_env_steps_per_s"]
        out["env_steps_per_cpu_s"] = round(rate / max(out["steady_cpu"]["cores_used"], 1e-9), 1)
        # CPU per env step of each process in the run: compare with the bound's c_* parts
        out["steady_cpu"]["cpu_us_per_env_step"] = {
            k: round(v / rate * 1e6, 1) for k, v in out["steady_cpu"]["cores_by_process"].items()}
    first = min((r["time"] for r in rows if "env_steps_total" in r), default=None)
    out["first_learner_step_after_s"] = None if first is None else round(first - t0, 1)
    return {
        **out,
        "whole_run_env_steps_per_s": summary["env_steps_per_s"],  # Ray start-up included
        "env_steps": summary["env_steps"],
        "wall_s": summary["wall_s"],
        "rollout_actors": cfg.actors.num_actors,
        "envs_per_actor": envs,
        "rollout_len": cfg.learner.rollout,
        "learner_batch": cfg.learner.batch_size,
        "network": network,
        "network_shortcuts": shortcuts,
        "network_parameters": num_parameters(make_network(cfg)),
        "machine_busy_before": busy_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


# ----------------------------------------------------------------------------- (b) bound
def _timed(fn, seconds: float, min_calls: int = 3) -> tuple[int, float, float]:
    """Call fn() until `seconds` of wall time passed (at least min_calls); (calls, cpu_s, wall_s)."""
    fn()  # warm-up call
    calls, c0, w0 = 0, time.process_time(), time.perf_counter()
    while calls < min_calls or time.perf_counter() - w0 < seconds:
        fn()
        calls += 1
    return calls, time.process_time() - c0, time.perf_counter() - w0


def bound(network: str = "local", envs: int = 16, seconds_each: float = 5.0, cores: int | None = None,
          seed: int = 0, shortcuts: bool = True) -> dict:
    import torch

    from mmotif.actors.rollout import RolloutWorker
    from mmotif.learners.learner import Learner
    from mmotif.nethack import actions as A
    from mmotif.skills.build import make_vector_env

    torch.set_num_threads(1)  # as a rollout actor (threads_per_actor) and a 1-CPU Ray actor
    cores = cores or len(os.sched_getaffinity(0))
    cfg = bench_config(network, envs, shortcuts=shortcuts)
    T, batch = cfg.learner.rollout, cfg.learner.batch_size
    out: dict = {"cores": cores, "torch_threads": torch.get_num_threads(), "machine_busy_before": machine_busy()}

    # env only: the vector skill env, random actions
    venv = make_vector_env(cfg, envs, seed)
    venv.reset()
    rng = np.random.default_rng(seed)
    n, cpu, wall = _timed(lambda: venv.step(rng.integers(A.NUM_ACTIONS, size=envs)), seconds_each)
    c_env = cpu / (n * envs)
    out["env_only_steps_per_s"] = {"cpu": round(1 / c_env, 1), "wall": round(n * envs / wall, 1)}
    steps_obs = []  # T consecutive steps' observations, for acting
    for _ in range(T):
        venv.step(rng.integers(A.NUM_ACTIONS, size=envs))
        steps_obs.append({k: torch.from_numpy(v.copy()) for k, v in venv.obs.items()})
    venv.close()

    # acting: batched inference over the envs' observations, T steps, new weights each time
    worker = RolloutWorker(cfg, 0, seed, num_envs=envs)
    out["network_shortcuts"] = shortcuts
    net, state = worker.net, worker.net.initial_state(envs)
    weights = {k: v.clone() for k, v in net.state_dict().items()}

    def act_rollout():
        net.load_state_dict(weights)  # a new policy version per rollout, as in a run: empties the caches
        for obs in steps_obs:
            net.act(obs, state)

    n, cpu, wall = _timed(act_rollout, seconds_each / 2, min_calls=3)
    c_act = cpu / (n * T * envs)
    out["act_samples_per_s"] = {"cpu": round(1 / c_act, 1), "wall": round(n * T * envs / wall, 1)}

    # a real rollout (env + act + buffers): the check that c_env + c_act adds up
    rollouts_per_batch = max(1, math.ceil(batch / (T * envs)))
    batches = []
    n, cpu, wall = _timed(lambda: batches.append(worker.collect()), seconds_each, min_calls=rollouts_per_batch)
    c_rollout = cpu / (n * T * envs)
    out["rollout_steps_per_s"] = {"cpu": round(1 / c_rollout, 1), "wall": round(n * T * envs / wall, 1)}
    worker.close()

    # learning: Learner.train on the run's batch shapes (the rollouts just collected), with a
    # reward model for every skill as a run has from its first reward version on (a learner
    # without them scores nothing: that cost is reported beside, not in the bound)
    use = batches[-rollouts_per_batch:]
    samples = sum(b.env_steps for b in use)
    costs = {}
    for rewards in ("models", "constant"):
        learner = Learner(cfg)
        if rewards == "models":
            learner.set_reward_models(_untrained_reward_models(cfg))
        n, cpu, wall = _timed(lambda: learner.train(use), seconds_each, min_calls=3)
        costs[rewards] = (cpu / (n * samples), n * samples / wall)
    c_learn = costs["models"][0]
    out["learn_samples_per_s"] = {"cpu": round(1 / c_learn, 1), "wall": round(costs["models"][1], 1),
                                  "batch_shape_T_B": [T, samples // T],
                                  "cpu_constant_rewards": round(1 / costs["constant"][0], 1)}

    total = c_env + c_act + c_learn
    out["cpu_us_per_sample"] = {"env": round(c_env * 1e6, 1), "act": round(c_act * 1e6, 1),
                                "learn": round(c_learn * 1e6, 1), "rollout_measured": round(c_rollout * 1e6, 1)}
    out["network_only_samples_per_s"] = round(1 / (c_act + c_learn), 1)
    out["bound_env_steps_per_s"] = round(cores / total, 1)
    out["split_bound_env_steps_per_s"] = round(min(1 / (c_env + c_act), 1 / c_learn) * cores / 2, 1)
    out["bound_with_measured_rollout_env_steps_per_s"] = round(cores / (c_rollout + c_learn), 1)
    out["formula"] = "bound = cores / (c_env + c_act + c_learn), c_* in CPU s per env step"
    return out


def _untrained_reward_models(cfg):
    """A reward-model set with a freshly initialised model per skill: its scores are noise,
    but scoring costs what a trained version's does."""
    import torch

    from mmotif.rewards.model import RewardModel
    from mmotif.rewards.stats import RewardStats
    from mmotif.rewards.versions import RewardModelSet, SkillReward

    torch.manual_seed(0)
    return RewardModelSet([SkillReward(name=s.name, state_dict=RewardModel().state_dict(),
                                       stats=RewardStats.constant()) for s in cfg.skills], version=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", choices=("local", "paper"), default="local")
    p.add_argument("--seconds", type=float, default=60.0, help="end-to-end training time")
    p.add_argument("--envs", type=int, default=16, help="envs per rollout actor")
    p.add_argument("--actors", type=int, default=1,
                   help="rollout actors in the end-to-end run (the local preset has 1); the bound is per env step")
    p.add_argument("--warmup", type=float, default=15.0, help="seconds after the first learner step not counted")
    p.add_argument("--bound-seconds", type=float, default=5.0, help="time for each part of the bound")
    p.add_argument("--cores", type=int, default=None, help="cores for the bound (default: this process's)")
    p.add_argument("--only", choices=("e2e", "bound"), default=None)
    p.add_argument("--reference-network", action="store_true",
                   help="the network's exact shortcuts off (learner.network.shortcuts: false), the "
                        "computation before them, in the run and the bound")
    args = p.parse_args()

    result: dict = {"network": args.network, "envs": args.envs, "actors": args.actors, "seconds": args.seconds}
    if args.only != "bound":
        result["end_to_end"] = end_to_end(args.network, args.seconds, args.envs, args.warmup,
                                          shortcuts=not args.reference_network, actors=args.actors)
    if args.only != "e2e":
        with stdout_to_stderr():
            result["bound"] = bound(args.network, args.envs, args.bound_seconds, args.cores,
                                    shortcuts=not args.reference_network)
    if "end_to_end" in result and "bound" in result:
        e2e = result["end_to_end"]["steady_env_steps_per_s"]
        result["ratio"] = None if e2e is None else round(e2e / result["bound"]["bound_env_steps_per_s"], 3)
        result["ratio_to_split_bound"] = None if e2e is None else round(
            e2e / result["bound"]["split_bound_env_steps_per_s"], 3)
        result["target_ratio"] = 0.8
        # The same, per CPU-second the run actually got (a shared machine gives it less than
        # `cores`): the share of the run's CPU time that went into env + act + learn work.
        per_cpu = result["end_to_end"].get("env_steps_per_cpu_s")
        b = result["bound"]
        result["ratio_per_cpu_s"] = None if not per_cpu else round(
            per_cpu * b["cores"] / b["bound_env_steps_per_s"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
