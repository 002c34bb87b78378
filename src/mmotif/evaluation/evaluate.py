"""Zero-shot evaluation of a task: frozen skill network + the task's code policy over skills
(spec §10.1, §15.2).

`evaluate(cfg, net, task, policy, episodes, seed)` runs episodes in a small batch of skill
envs in this process. Every env carries the task's :class:`~mmotif.tasks.TaskTracker`
as its task hook (attributes wired into the policy, proxy and exact checks every step). The
network acts with **sampled** actions (as in the reference), on the CPU, without gradients;
its recurrent state is reset at every episode start.

An episode ends at death, at the step limit (`env.max_episode_steps`, 10,000 by default) or,
for navigation and composite tasks, once *both* the proxy and the exact check have fired
(both are "ever reached" tests, so running on after one of them cannot change it, and
stopping at the first would cut the other short). Interaction tasks always run to death or
the step limit and count events.

The results (per episode and mean ± standard error) go next to the paper's number for the
task in a markdown table, a JSON file and a bar chart (PNG), written by `EvalResults.write`.
`cmd_eval` runs the `mmotif eval` command (its arguments: `mmotif.cli`).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmotif.config import RunConfig
from mmotif.evaluation.episodes import TaskEpisodes, play
from mmotif.skills.code_policy import CodePolicy
from mmotif.skills.env import SkillEnv
from mmotif.skills.specs import SkillSet
from mmotif.skills.vector import VectorSkillEnv
from mmotif.tasks import TASKS, Task, TaskTracker, get_task, load_task_policy

__all__ = [
    "EvalResults",
    "cmd_eval",
    "evaluate",
    "mean_se",
]

def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for fewer than two values)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
    return float(v.mean()), se


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

    def _fmt(self, mean: float, se: float) -> str:
        if math.isnan(mean):
            return "n/a"
        if self.task.paper.unit == "rate":
            return f"{100 * mean:.1f}% ± {100 * se:.1f}%"
        return f"{mean:.2f} ± {se:.2f}"

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
            "steps": dict(zip(("mean", "se"), mean_se(e["steps"] for e in eps))),
            "deaths": sum(bool(e["died"]) for e in eps),
            "truncated": sum(bool(e["truncated"]) for e in eps),
            "policy_errors": sum(e["policy_errors"] for e in eps),
            "exact_method": dict(Counter(e["exact_method"] for e in eps)),
        }

    def table_markdown(self) -> str:
        s = self.summary()
        what = "success rate" if self.task.paper.unit == "rate" else f"{self.task.metric} per episode"
        lines = [
            f"### {self.task.title} ({self.task.kind}; {s['episodes']} episodes, "
            f"≤{self.max_steps} steps, policy {self.policy_name})",
            "",
            f"| {what} | mmotif proxy | mmotif exact | paper (MaestroMotif) |",
            "|---|---|---|---|",
            f"| mean ± s.e. | {self._fmt(s['proxy']['mean'], s['proxy']['se'])} | "
            f"{self._fmt(s['exact']['mean'], s['exact']['se'])} | {self.task.paper.format()} |",
            "",
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
) -> EvalResults:
    """Run `episodes` episodes of `task` and return their results.

    policy: a CodePolicy (copied per env), a policy file, or None for the task's shipped
    reference policy. record: save the first `record` episodes as replays (npz) under
    `out_dir/replays` (and render the first as GIF + HTML). log: a callable for one line
    per finished episode (default: print to stderr). threads: torch CPU threads during the
    run (restored afterwards; 1 is fastest for these small batches, and avoids OpenMP spinning
    on a shared machine); None leaves torch's setting alone.
    """
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _evaluate(cfg, net, task, policy, episodes, seed, num_envs, max_steps, greedy,
                         record, out_dir, log)
    finally:
        torch.set_num_threads(previous_threads)


def _evaluate(cfg, net, task, policy, episodes, seed, num_envs, max_steps, greedy, record, out_dir,
              log) -> EvalResults:
    task = get_task(task) if isinstance(task, str) else task
    skills = SkillSet(skills=tuple(cfg.skills))
    num_envs = max(1, min(num_envs or min(episodes, 8), episodes))
    max_steps = max_steps or cfg.env.max_episode_steps
    budget = cfg.env.policy_call_budget_s

    def make_policy(i: int) -> CodePolicy:
        if isinstance(policy, CodePolicy):
            return _policy_copy(policy, seed * 1009 + i)
        return load_task_policy(task, policy, skills, seed=seed * 1009 + i, budget_s=budget)

    def make_env(i: int) -> SkillEnv:
        return SkillEnv(skills, make_policy(i), crop=tuple(cfg.env.crop), max_episode_steps=max_steps,
                        msg_max_keys=cfg.env.msg_max_keys, caption_rate=0.0, seed=seed * 1009 + i,
                        task=TaskTracker(task))

    hooks = TaskEpisodes(task, episodes, skills.names, record=record, max_frames=max_steps + 1,
                         replay_dir=None if out_dir is None else Path(out_dir) / "replays", log=log)
    venv = VectorSkillEnv(make_env, num_envs, hooks)
    policy_name = venv.envs[0].policy.name

    if any(p.device.type != "cpu" for p in net.parameters()):
        net = copy.deepcopy(net).to("cpu")          # the caller's network stays where it is
    net.eval()
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    try:
        results = play(venv, net, greedy=greedy)
    finally:
        venv.close()
    results.sort(key=lambda r: r["episode"])
    out = EvalResults(task, results, policy_name=policy_name, seed=seed, max_steps=max_steps,
                      wall_s=time.perf_counter() - t0)
    if out_dir is not None and record:
        _render_first_replay(out, Path(out_dir))
    return out


def _render_first_replay(results: EvalResults, out_dir: Path) -> None:
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
def _task_names(tasks: list[str], policy: Path | None) -> list[str]:
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


def cmd_eval(args) -> int:
    from mmotif.config import load_config
    from mmotif.models.build import make_network

    try:
        names = _task_names(args.task, args.policy)
    except ValueError as err:
        print(f"mmotif eval: {err}", file=sys.stderr)
        return 2
    if args.checkpoint is not None:
        from mmotif.checkpoint import CheckpointError, load_network

        try:
            cfg, net, ckpt = load_network(args.checkpoint)
        except (CheckpointError, FileNotFoundError) as err:
            print(f"mmotif eval: {err}", file=sys.stderr)
            return 2
    elif args.random_init:
        cfg = load_config(args.config, args.preset)
        torch.manual_seed(args.seed)
        net, ckpt = make_network(cfg), "random-init"
    else:
        print("mmotif eval: give --checkpoint <run> (or --random-init for a smoke test)", file=sys.stderr)
        return 2
    out_root = args.out or (Path(args.checkpoint) / "eval" if args.checkpoint else Path("runs/eval"))
    all_results = []
    for name in names:
        res = evaluate(cfg, net, name, args.policy, episodes=args.episodes, seed=args.seed,
                       num_envs=args.envs, max_steps=args.max_steps, greedy=args.greedy,
                       record=args.record, out_dir=out_root / name)
        res.checkpoint = ckpt
        res.write(out_root / name)
        all_results.append(res)
        print(res.table_markdown())
        for kind, path in res.files.items():
            print(f"  {kind}: {path}")
    if len(all_results) > 1:
        out_root.mkdir(parents=True, exist_ok=True)
        (out_root / "results.md").write_text("\n".join(r.table_markdown() for r in all_results))
        chart = bar_chart(all_results, out_root / "all_tasks.png") if has_matplotlib() else "no chart (no matplotlib)"
        print(f"all tasks: {out_root / 'results.md'}, {chart}")
    return 0
