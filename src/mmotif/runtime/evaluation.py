"""Evaluation on Ray: the shards of `mmotif eval` (seeds × pieces) run in parallel actors.

`EvalActor` is a thin shell around `mmotif.evaluation.evaluate.evaluate` (the one episode
loop): it holds the frozen network, runs one shard per call and returns the shard's episodes,
each tagged with the actor that played it. The network, the config and the policy's source
travel as Ray objects; a recorded replay comes back as bytes and is written by the caller,
so no actor opens a path that another node wrote.

`connect(address)` joins a cluster (`address`, or RAY_ADDRESS as `ray.init` reads it) or starts
Ray on this machine's cores; `evaluate_on_ray` places one actor per CPU of the cluster (at
most one per shard) and merges the shards per task.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import ray

from mmotif.config import RunConfig, build_config
from mmotif.evaluation.evaluate import (
    EvalResults, PolicySource, bar_chart, eval_protocol, evaluate, evaluate_in_process, has_matplotlib,
    load_eval_target, merge_results, render_first_replay, shard_plan, task_names, task_policies,
)
from mmotif.tasks import get_task


def connect(address: str | None = None) -> bool:
    """Ray for evaluation; True when it is a cluster (an address given, or RAY_ADDRESS set)."""
    cluster = bool(address or os.environ.get("RAY_ADDRESS"))
    if not ray.is_initialized():
        if cluster:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    return cluster


@ray.remote(num_cpus=1, max_restarts=0)  # a failed shard fails the evaluation: no silent gaps
class EvalActor:
    def __init__(self, config: dict, net_state: dict):
        import torch

        from mmotif.models.build import make_network

        self.cfg = build_config(config, "config sent by mmotif eval")
        self.net = make_network(self.cfg)
        self.net.load_state_dict(net_state)
        self.net.requires_grad_(False)
        torch.set_num_threads(1)
        self.worker = f"{ray.get_runtime_context().get_node_id()[:8]}:{os.getpid()}"

    def run(self, task: str, policy: PolicySource, episodes: int, seed: int, shard: int,
            max_steps: int | None, greedy: bool, record: int, num_envs: int | None) -> dict:
        """The shard's results as plain data (a Task does not pickle)."""
        with tempfile.TemporaryDirectory() as tmp:
            code = self._policy(task, policy, Path(tmp))
            res = evaluate(self.cfg, self.net, task, code, episodes=episodes, seed=seed, shard=shard,
                           num_envs=num_envs, max_steps=max_steps, greedy=greedy, record=record,
                           out_dir=tmp if record else None, log=lambda _: None, render=False)
            for e in res.episodes:
                e["worker"] = self.worker
                if "replay" in e:
                    e["replay_bytes"] = Path(e.pop("replay")).read_bytes()
        return {"episodes": res.episodes, "seed": seed, "max_steps": res.max_steps, "wall_s": res.wall_s}

    @staticmethod
    def _policy(task: str, policy: PolicySource, tmp: Path) -> Path | None:
        if policy.source is None:
            return None
        path = tmp / f"{task}_policy.py"  # evaluate loads a policy file the way `--policy` does
        path.write_text(policy.source)
        return path


def evaluate_on_ray(cfg: RunConfig, net, policies: dict[str, PolicySource], episodes: int,
                    seeds: list[int], *, actors: int | None = None, max_steps: int | None = None,
                    greedy: bool = False, record: int = 0, num_envs: int | None = None,
                    out_dir: Path | None = None) -> dict[str, EvalResults]:
    """Each task of `policies` over `episodes` episodes split across `seeds`, in parallel
    actors (default: one per CPU Ray has). Ray must be initialised (see `connect`)."""
    workers = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    plan = shard_plan(episodes, seeds, workers)
    workers = min(workers, len(plan))
    state = ray.put({k: v.detach().cpu() for k, v in net.state_dict().items()})
    pool = [EvalActor.remote(cfg.model_dump(mode="json"), state) for _ in range(workers)]
    out = {}
    try:
        for task, policy in policies.items():
            t0 = time.perf_counter()
            calls = [pool[i % workers].run.remote(task, policy, n, seed, shard, max_steps, greedy,
                                                  record if i == 0 else 0, num_envs)
                     for i, (seed, shard, n) in enumerate(plan)]
            parts = [EvalResults(get_task(task), d["episodes"], policy_name=policy.name, seed=d["seed"],
                                 max_steps=d["max_steps"], wall_s=d["wall_s"]) for d in ray.get(calls)]
            out[task] = merge_results(parts, wall_s=time.perf_counter() - t0)
            if out_dir is not None:
                _write_replays(out[task], Path(out_dir) / task / "replays")
    finally:
        for actor in pool:
            ray.kill(actor)
    return out


def _write_replays(res: EvalResults, folder: Path) -> None:
    for e in res.episodes:
        data = e.pop("replay_bytes", None)
        if data is not None:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{res.task.name}_seed{e['seed']}_episode{e['episode']:03d}.npz"
            path.write_bytes(data)
            e["replay"] = str(path)


# -- the command ----------------------------------------------------------------------------


def cmd_eval(args) -> int:
    """`mmotif eval`: every task's episodes over several seeds, in parallel actors (or in this
    process with --actors 0); prints each table and writes results, charts and replays."""
    from mmotif.checkpoint import CheckpointError

    try:
        names = task_names(args.task, args.policy)
    except ValueError as err:
        print(f"mmotif eval: {err}", file=sys.stderr)
        return 2
    for flag in ("episodes", "seeds", "actors"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "actors" else 1):
            print(f"mmotif eval: --{flag} must be {'>= 0' if flag == 'actors' else '>= 1'}, got {value}",
                  file=sys.stderr)
            return 2
    if args.checkpoint is None and not args.random_init:
        print("mmotif eval: give --checkpoint <run> (or --random-init for a smoke test)", file=sys.stderr)
        return 2
    try:
        cfg, net, ckpt, run_dir = load_eval_target(args)
        policies = task_policies(names, args, run_dir)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"mmotif eval: {err}", file=sys.stderr)
        return 2
    out_root = args.out or (run_dir / "eval" if run_dir else Path("runs/eval"))
    all_results = _run_all(cfg, net, policies, args, out_root)
    for res in all_results:
        res.checkpoint = ckpt
        res.write(out_root / res.task.name)
        print(res.table_markdown())
        for kind, path in res.files.items():
            print(f"  {kind}: {path}")
    if len(all_results) > 1:
        out_root.mkdir(parents=True, exist_ok=True)
        (out_root / "results.md").write_text("\n".join(r.table_markdown() for r in all_results))
        chart = bar_chart(all_results, out_root / "all_tasks.png") if has_matplotlib() else "no chart (no matplotlib)"
        print(f"all tasks: {out_root / 'results.md'}, {chart}")
    return 0


def _run_all(cfg, net, policies, args, out_root: Path) -> list[EvalResults]:
    """Every task's results: in Ray actors (all CPUs of the machine or cluster), or in this
    process with --actors 0."""
    if args.actors == 0:
        episodes, seeds = eval_protocol(args, cluster=False)
        return [evaluate_in_process(cfg, net, task, policy, episodes, seeds, args, out_root / task)
                for task, policy in policies.items()]
    episodes, seeds = eval_protocol(args, cluster=connect(args.address))
    by_task = evaluate_on_ray(cfg, net, policies, episodes, seeds, actors=args.actors, max_steps=args.max_steps,
                              greedy=args.greedy, record=args.record, num_envs=args.envs, out_dir=out_root)
    for task, res in by_task.items():
        if args.record:
            render_first_replay(res, out_root / task)
    return list(by_task.values())
