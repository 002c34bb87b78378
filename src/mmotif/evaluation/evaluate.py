"""Zero-shot evaluation of a task: frozen skill network + the task's code policy over skills
(spec §10.1, §15.2).

`evaluate(cfg, net, task, policy, episodes, seed)` runs episodes in a small batch of skill
envs in this process; `mmotif eval` (`mmotif.runtime.evaluation.cmd_eval`) spreads the
episodes of several seeds over Ray actors, each running `evaluate` on its shard, and merges
the shards (`merge_results`). Every env carries the task's :class:`~mmotif.tasks.TaskTracker`
as its task hook (attributes wired into the policy, proxy and exact checks every step). The
network acts with **sampled** actions (as in the reference), on the CPU, without gradients;
its recurrent state is reset at every episode start.

An episode ends at death, at the step limit (`env.max_episode_steps`, 10,000 by default) or,
for navigation and composite tasks, once *both* the proxy and the exact check have fired
(both are "ever reached" tests, so running on after one of them cannot change it, and
stopping at the first would cut the other short). Interaction tasks always run to death or
the step limit and count events.

The results (per episode; mean ± standard error; the 95% interval: Wilson's for success rates,
mean ± 1.96 s.e. for counts; per seed) go next to the paper's number for the task in a markdown
table, a JSON file and a bar chart (PNG), written by `EvalResults.write`. The paper averages
about 1,000 episodes over 9 seeds (spec §10.1): a success rate's interval is then about ±3
points; the table says when it is wider.
`cmd_eval` runs the `mmotif eval` command (its arguments: `mmotif.cli`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmotif.config import RunConfig
from mmotif.evaluation.episodes import TaskEpisodes, play
from mmotif.evaluation.intervals import (
    TARGET_HALF_WIDTH, episodes_for_half_width, interval95, mean_se,
)
from mmotif.skills.code_policy import CodePolicy
from mmotif.skills.env import SkillEnv
from mmotif.skills.specs import SkillSet
from mmotif.skills.vector import VectorSkillEnv
from mmotif.tasks import TASKS, Task, TaskTracker, get_task, load_task_policy

__all__ = [
    "EvalResults",
    "PolicySource",
    "evaluate",
    "merge_results",
    "shard_plan",
]


def shard_plan(episodes: int, seeds: list[int], workers: int) -> list[tuple[int, int, int]]:
    """(seed, shard, episodes) pieces: `episodes` split evenly over `seeds`, each seed's share
    split into shards so that there are at least `workers` pieces (one per actor) when the
    episodes allow."""
    per_seed = [episodes // len(seeds) + (i < episodes % len(seeds)) for i in range(len(seeds))]
    shards = max(1, math.ceil(workers / len(seeds)))
    plan = []
    for seed, n in zip(seeds, per_seed):
        k = min(shards, n)
        plan += [(seed, j, n // k + (j < n % k)) for j in range(k)]
    return plan


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------
@dataclass
class EvalResults:
    task: Task
    episodes: list[dict]
    policy_name: str = ""
    seed: int = 0
    max_steps: int = 0
    wall_s: float = 0.0
    checkpoint: str = ""
    files: dict[str, str] = field(default_factory=dict)

    def _fmt(self, mean: float, se: float | None = None) -> str:
        if math.isnan(mean):
            return "n/a"
        if self.task.paper.unit == "rate":
            return f"{100 * mean:.1f}%" + ("" if se is None else f" ± {100 * se:.1f}%")
        return f"{mean:.2f}" + ("" if se is None else f" ± {se:.2f}")

    def summary(self) -> dict:
        eps = self.episodes
        proxy = mean_se(e["proxy"] for e in eps)
        exact = mean_se(e["exact"] for e in eps)
        count_keys = sorted({k for e in eps for k in e["counts"]})
        return {
            "task": self.task.name, "title": self.task.title, "kind": self.task.kind,
            "metric": self.task.metric, "unit": self.task.paper.unit,
            "episodes": len(eps), "seed": self.seed, "max_steps": self.max_steps,
            "policy": self.policy_name, "checkpoint": self.checkpoint, "wall_s": round(self.wall_s, 2),
            "proxy": {"mean": proxy[0], "se": proxy[1], "rule": self.task.proxy_rule},
            "exact": {"mean": exact[0], "se": exact[1], "rule": self.task.exact_rule},
            "paper": {"mean": self.task.paper.mean, "se": self.task.paper.se},
            "counts": {k: dict(zip(("mean", "se"), mean_se(e["counts"].get(k, 0) for e in eps)))
                       for k in count_keys},
            "interval95": {check: interval95((e[check] for e in eps), self.task.paper.unit)
                           for check in ("proxy", "exact")},
            "per_seed": self.per_seed(),
            "workers": len({e.get("worker", "") for e in eps}),
            "steps": dict(zip(("mean", "se"), mean_se(e["steps"] for e in eps))),
            "deaths": sum(bool(e["died"]) for e in eps),
            "truncated": sum(bool(e["truncated"]) for e in eps),
            "policy_errors": sum(e["policy_errors"] for e in eps),
            "exact_method": dict(Counter(e["exact_method"] for e in eps)),
        }

    def per_seed(self) -> dict[str, dict]:
        seeds = sorted({e.get("seed", self.seed) for e in self.episodes})
        out = {}
        for seed in seeds:
            eps = [e for e in self.episodes if e.get("seed", self.seed) == seed]
            out[str(seed)] = {"episodes": len(eps), **{check: mean_se(e[check] for e in eps)[0]
                                                        for check in ("proxy", "exact")}}
        return out

    def _fmt_interval(self, iv: dict) -> str:
        if math.isnan(iv["low"]):
            return "n/a"
        if self.task.paper.unit == "rate":
            return f"{100 * iv['low']:.1f}–{100 * iv['high']:.1f}% (±{100 * iv['half_width']:.1f} points)"
        return f"{iv['low']:.2f}–{iv['high']:.2f} (±{iv['half_width']:.2f})"

    def _width_note(self, s: dict) -> str:
        half = max(iv["half_width"] for iv in s["interval95"].values())
        if self.task.paper.unit != "rate" or math.isnan(half) or round(100 * half, 1) <= 100 * TARGET_HALF_WIDTH:
            return ""
        return (f"- **the 95% interval is ±{100 * half:.1f} points, wider than the paper-scale "
                f"±{100 * TARGET_HALF_WIDTH:.0f}** ({s['episodes']} episodes; ±3 points needs up to "
                f"{episodes_for_half_width():,}, e.g. `--episodes 1080 --seeds 9` on a cluster)")

    def table_markdown(self) -> str:
        s = self.summary()
        what = "success rate" if self.task.paper.unit == "rate" else f"{self.task.metric} per episode"
        iv = s["interval95"]
        interval = "95% interval (Wilson)" if self.task.paper.unit == "rate" else "95% interval (±1.96 s.e.)"
        seeds = ", ".join(f"{k}: {self._fmt(v['exact'])} (n={v['episodes']})"
                          for k, v in s["per_seed"].items())
        lines = [
            f"### {self.task.title} ({self.task.kind}; {s['episodes']} episodes over "
            f"{len(s['per_seed'])} seed(s), {s['workers']} worker(s), ≤{self.max_steps} steps, "
            f"policy {self.policy_name})",
            "",
            f"| {what} | mmotif proxy | mmotif exact | paper (MaestroMotif) |",
            "|---|---|---|---|",
            f"| mean ± s.e. | {self._fmt(s['proxy']['mean'], s['proxy']['se'])} | "
            f"{self._fmt(s['exact']['mean'], s['exact']['se'])} | {self.task.paper.format()} |",
            f"| {interval} | {self._fmt_interval(iv['proxy'])} | {self._fmt_interval(iv['exact'])} | |",
            "",
            *([note] if (note := self._width_note(s)) else []),
            f"- exact per seed: {seeds}",
            f"- proxy: {self.task.proxy_rule}",
            f"- exact: {self.task.exact_rule} (decided by: "
            + ", ".join(f"{k} ×{v}" for k, v in s["exact_method"].items()) + ")",
            f"- episode steps {s['steps']['mean']:.0f} ± {s['steps']['se']:.0f}; deaths "
            f"{s['deaths']}, step limit {s['truncated']}, policy errors {s['policy_errors']}",
            "- counts per episode: " + ", ".join(
                f"{k} {v['mean']:.2f} ± {v['se']:.2f}" for k, v in s["counts"].items()),
        ]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> dict[str, str]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(self.table_markdown())
        data = {"summary": self.summary(), "episodes": self.episodes}
        (out / "results.json").write_text(json.dumps(data, indent=1, default=str))
        self.files.update(markdown=str(out / "results.md"), json=str(out / "results.json"))
        if has_matplotlib():  # the chart needs the `plots` extra; the numbers do not
            self.files["chart"] = str(bar_chart([self], out / f"{self.task.name}.png"))
        return self.files


def has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def bar_chart(results: list[EvalResults], path: str | Path) -> Path:
    """Proxy, exact and the paper's value per task, with standard-error bars. Rates and
    counts are drawn on separate axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = [[r for r in results if r.task.paper.unit == unit] for unit in ("rate", "count")]
    groups = [g for g in groups if g]
    fig = Figure(figsize=(max(4.0, 2.2 * len(results) + 1.5), 3.6 * len(groups)))
    FigureCanvasAgg(fig)
    for row, group in enumerate(groups, start=1):
        ax = fig.add_subplot(len(groups), 1, row)
        width = 0.26
        xs = np.arange(len(group))
        for k, (label, color) in enumerate((("proxy", "#4c72b0"), ("exact", "#55a868"), ("paper", "#c44e52"))):
            means, errs = [], []
            for r in group:
                s = r.summary()
                m, e = (s[label]["mean"], s[label]["se"])
                means.append(0.0 if math.isnan(m) else m)
                errs.append(0.0 if math.isnan(e) else e)
            if group[0].task.paper.unit == "rate":
                means, errs = [100 * m for m in means], [100 * e for e in errs]
            ax.bar(xs + (k - 1) * width, means, width, yerr=errs, capsize=3, label=label, color=color)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{r.task.title}\n(n={len(r.episodes)})" for r in group])
        ax.set_ylabel("success (%)" if group[0].task.paper.unit == "rate" else "count per episode")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("mmotif zero-shot evaluation vs. paper (mean ± s.e.)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# ---------------------------------------------------------------------------------------
# Running episodes
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicySource:
    """A task's policy over skills as text (None: the task's shipped reference policy)."""

    source: str | None
    name: str


def _policy_copy(policy: CodePolicy, seed: int) -> CodePolicy:
    return CodePolicy.from_source(policy.source, policy.skill_names, policy.skills_with_precondition,
                                  name=policy.name, seed=seed, budget_s=policy.budget_s,
                                  describe_line=getattr(policy, "_describe_line", None))


def evaluate(
    cfg: RunConfig,
    net: torch.nn.Module,
    task: Task | str,
    policy: CodePolicy | str | Path | None = None,
    episodes: int = 10,
    seed: int = 0,
    num_envs: int | None = None,
    max_steps: int | None = None,
    greedy: bool = False,
    record: int = 0,
    out_dir: str | Path | None = None,
    log=None,
    threads: int | None = 1,
    shard: int = 0,
    render: bool = True,
) -> EvalResults:
    """Run `episodes` episodes of `task` and return their results.

    policy: a CodePolicy (copied per env), a policy file, or None for the task's shipped
    reference policy. record: save the first `record` episodes as replays (npz) under
    `out_dir/replays` (and render the first as GIF + HTML). log: a callable for one line
    per finished episode (default: print to stderr). threads: torch CPU threads during the
    run (restored afterwards; 1 is fastest for these small batches, and avoids OpenMP spinning
    on a shared machine); None leaves torch's setting alone. shard: which piece of the seed's
    episodes this is (its games, policies and sampled actions get their own random streams).
    render: draw the first replay as GIF + HTML (off where the recordings travel elsewhere).
    """
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _evaluate(cfg, net, task, policy, episodes, seed, num_envs, max_steps, greedy,
                         record, out_dir, log, shard, render)
    finally:
        torch.set_num_threads(previous_threads)


def _stream_seed(seed: int, shard: int) -> int:
    """One random stream per (seed, shard); shard 0 keeps the seed's own numbers."""
    return seed if shard == 0 else int(np.random.SeedSequence([seed, shard]).generate_state(1)[0] >> 1)


def _evaluate(cfg, net, task, policy, episodes, seed, num_envs, max_steps, greedy, record, out_dir,
              log, shard, render) -> EvalResults:
    task = get_task(task) if isinstance(task, str) else task
    stream = _stream_seed(seed, shard)
    skills = SkillSet(skills=tuple(cfg.skills))
    num_envs = max(1, min(num_envs or min(episodes, 8), episodes))
    max_steps = max_steps or cfg.env.max_episode_steps
    budget = cfg.env.policy_call_budget_s

    def make_policy(i: int) -> CodePolicy:
        if isinstance(policy, CodePolicy):
            return _policy_copy(policy, stream * 1009 + i)
        return load_task_policy(task, policy, skills, seed=stream * 1009 + i, budget_s=budget)

    def make_env(i: int) -> SkillEnv:
        return SkillEnv(skills, make_policy(i), crop=tuple(cfg.env.crop), max_episode_steps=max_steps,
                        msg_max_keys=cfg.env.msg_max_keys, caption_rate=0.0, seed=stream * 1009 + i,
                        task=TaskTracker(task))

    hooks = TaskEpisodes(task, episodes, skills.names, record=record, max_frames=max_steps + 1,
                         replay_dir=None if out_dir is None else Path(out_dir) / "replays", log=log)
    venv = VectorSkillEnv(make_env, num_envs, hooks)
    policy_name = venv.envs[0].policy.name

    if any(p.device.type != "cpu" for p in net.parameters()):
        net = copy.deepcopy(net).to("cpu")          # the caller's network stays where it is
    net.eval()
    torch.manual_seed(stream)
    t0 = time.perf_counter()
    try:
        results = play(venv, net, greedy=greedy)
    finally:
        venv.close()
    results.sort(key=lambda r: r["episode"])
    for r in results:
        r.update(seed=seed, shard=shard)
    out = EvalResults(task, results, policy_name=policy_name, seed=seed, max_steps=max_steps,
                      wall_s=time.perf_counter() - t0)
    if out_dir is not None and record and render:
        render_first_replay(out, Path(out_dir))
    return out


def merge_results(parts: list[EvalResults], wall_s: float | None = None) -> EvalResults:
    """One task's shards (any seeds, any workers) as one result, episodes ordered by seed,
    shard and episode."""
    first = parts[0]
    episodes = sorted((e for p in parts for e in p.episodes),
                      key=lambda e: (e.get("seed", 0), e.get("shard", 0), e["episode"]))
    return EvalResults(first.task, episodes, policy_name=first.policy_name, seed=min(p.seed for p in parts),
                       max_steps=first.max_steps, wall_s=max(p.wall_s for p in parts) if wall_s is None else wall_s)


def render_first_replay(results: EvalResults, out_dir: Path) -> None:
    from mmotif.evaluation.replay import Recording, render_gif, write_html

    for r in results.episodes:
        if "replay" in r:
            rec = Recording.load(r["replay"])
            every = max(1, len(rec) // 400)
            stem = Path(r["replay"]).with_suffix("")
            results.files["replay_gif"] = str(render_gif(rec, stem.with_suffix(".gif"), every=every, max_frames=400))
            results.files["replay_html"] = str(write_html(rec, stem.with_suffix(".html"), every=every,
                                                          max_frames=400, title=f"{results.task.title}: "
                                                          f"episode {r['episode']}"))
            return


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def task_names(tasks: list[str], policy: Path | None) -> list[str]:
    """The task ids to evaluate; ValueError (one line) for an unknown task or a --policy file
    that cannot be a policy (checked, not run), before any network is built."""
    from mmotif.config import check_policy_file

    try:
        names = list(TASKS) if any(t == "all" for t in tasks) else [get_task(t).name for t in tasks]
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    if policy is not None:
        if len(names) > 1:
            raise ValueError("--policy goes with a single --task")
        if not policy.exists():
            raise ValueError(f"policy file {policy} not found")
        check_policy_file(str(policy))
    return names


# Defaults of `mmotif eval`: on a cluster the paper's scale (±3 points at any rate; 9 seeds as
# in the paper), on one machine minutes of work (the table then states the wider interval).
CLUSTER_EPISODES, CLUSTER_SEEDS = 1080, 9
LOCAL_EPISODES, LOCAL_SEEDS = 60, 3


def generated_policy(run_dir: Path | None, task: str) -> Path | None:
    """The run's generated policy for `task`: <run>/plans/<task>.py, as
    `mmotif plan --task <task> --out <run>/plans` writes it."""
    path = None if run_dir is None else run_dir / "plans" / f"{task}.py"
    return path if path is not None and path.is_file() else None


def _run_folder(checkpoint: Path) -> Path:
    """The run folder of a run, checkpoint folder or learner.pt argument."""
    path = checkpoint.parent if checkpoint.is_file() else checkpoint
    return path.parent.parent if path.parent.name == "checkpoints" else path


def task_policies(names: list[str], args, run_dir: Path | None):
    """task -> PolicySource: --policy, else --reference (the shipped policy), else the run's
    generated one; ValueError naming the task without any."""
    if args.policy is not None and args.reference:
        raise ValueError("--policy and --reference exclude each other")
    out = {}
    for name in names:
        path = args.policy or (None if args.reference else generated_policy(run_dir, name))
        if path is not None:
            out[name] = PolicySource(Path(path).read_text(), str(path))
        elif args.reference:
            out[name] = PolicySource(None, f"reference:{name}")
        else:
            where = f"{run_dir / 'plans' / (name + '.py')}" if run_dir else "(no run: --random-init)"
            raise ValueError(f"no generated policy for {name} at {where}: write one with `mmotif plan "
                             f"--task {name} --out {run_dir / 'plans' if run_dir else '<run>/plans'}`, "
                             f"give --policy FILE, or --reference for the shipped reference policy")
    return out


def load_eval_target(args):
    """(config, network, checkpoint label, run folder) of the command's arguments."""
    from mmotif.config import load_config
    from mmotif.models.build import make_network

    if args.checkpoint is not None:
        from mmotif.checkpoint import load_network

        cfg, net, ckpt = load_network(args.checkpoint)
        return cfg, net, ckpt, _run_folder(Path(args.checkpoint))
    cfg = load_config(args.config, args.preset)
    torch.manual_seed(args.seed)
    return cfg, make_network(cfg), "random-init", None


def eval_protocol(args, cluster: bool) -> tuple[int, list[int]]:
    """(episodes per task, seeds): the command's, else the cluster or the local defaults."""
    episodes = args.episodes or (CLUSTER_EPISODES if cluster else LOCAL_EPISODES)
    return episodes, [args.seed + k for k in range(args.seeds or (CLUSTER_SEEDS if cluster else LOCAL_SEEDS))]


def evaluate_in_process(cfg, net, task: str, policy: PolicySource, episodes: int, seeds: list[int], args,
                         out_dir: Path) -> EvalResults:
    code = None
    if policy.source is not None:
        skills = SkillSet(skills=tuple(cfg.skills))
        code = CodePolicy.from_source(policy.source, skills.names, skills.with_precondition(), name=policy.name,
                                      budget_s=cfg.env.policy_call_budget_s)
    parts = [evaluate(cfg, net, task, code, episodes=n, seed=seed, num_envs=args.envs, max_steps=args.max_steps,
                      greedy=args.greedy, record=args.record if seed == seeds[0] else 0, out_dir=out_dir)
             for seed, _, n in shard_plan(episodes, seeds, 1)]
    res = merge_results(parts, wall_s=sum(p.wall_s for p in parts))
    res.policy_name = policy.name
    return res
