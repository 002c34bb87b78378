"""The run report: PNG plots from `metrics.jsonl` and a summary page (HTML + Markdown).

    <run_dir>/report/skill_reward.png      per-skill intrinsic reward per step
    <run_dir>/report/skill_usage.png       share of env steps per skill
    <run_dir>/report/learner.png           losses, entropy, throughput
    <run_dir>/report/annotation.png        labels per skill, informative (non-tie) labels
    <run_dir>/report/tie_share.png         tie share per skill, dedup hit rate
    <run_dir>/report/reward_probes.png     probe margin per skill and reward-model version
    <run_dir>/report/competence.png        per-skill outcome rates vs uniform-random actions
    <run_dir>/report/index.html, summary.md
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _keys(rows: list[dict], prefix: str) -> list[str]:
    return sorted({k for r in rows for k in r if k.startswith(prefix)})


def _plot(path: Path, rows: list[dict], keys: list[str], title: str, ylabel: str, smooth: int = 1) -> bool:
    series = [(k, *_series(rows, k)) for k in keys]
    series = [s for s in series if s[1]]
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    for key, xs, ys in series:
        if smooth > 1 and len(ys) > smooth:
            ys = [sum(ys[max(0, i - smooth + 1): i + 1]) / len(ys[max(0, i - smooth + 1): i + 1])
                  for i in range(len(ys))]
        ax.plot(xs, ys, label=key.split("/", 1)[-1], linewidth=1.2)
    ax.set_title(title)
    ax.set_xlabel("env steps")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


COMPETENCE_TITLE = "Skill competence: events per 1,000 steps of the skill (dashed: random actions)"


def _last_value(rows: list[dict], key: str) -> float | None:
    _, ys = _series(rows, key)
    return ys[-1] if ys else None


def _plot_competence(path: Path, rows: list[dict]) -> bool:
    """One subplot per `<skill>:<event>` the run recorded (`competence/`, over the run, and
    `competence_recent/`, over recent episodes), with the random-action rate of the same
    schedule as a dashed line (`competence_random/`), or, for a skill the random games never
    reached, the random rate over all steps as a dotted line (`competence_random_any/`)."""
    names = sorted({k.split("/", 1)[1] for k in _keys(rows, "competence/") + _keys(rows, "competence_recent/")})
    if not names:
        return False
    cols = 2 if len(names) > 1 else 1
    nrows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(7 if cols == 1 else 10, 2.6 * nrows + 0.6), dpi=110,
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        for prefix, label, style in (("competence_recent/", "recent", dict(linewidth=1.4)),
                                     ("competence/", "whole run", dict(linewidth=1.0, alpha=0.6))):
            xs, ys = _series(rows, prefix + name)
            if xs:
                ax.plot(xs, ys, label=label, **style)
        random = _last_value(rows, "competence_random/" + name)
        if random is not None:
            ax.axhline(random, color="k", linestyle="--", linewidth=1.0, label="random actions")
        else:
            anywhere = _last_value(rows, "competence_random_any/" + name)
            if anywhere is not None:
                ax.axhline(anywhere, color="k", linestyle=":", linewidth=1.0,
                           label="random actions, any skill active")
        ax.set_title(name.replace(":", ": "), fontsize=9)
        ax.set_ylabel("per 1k skill steps", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("env steps", fontsize=8)
    fig.suptitle(COMPETENCE_TITLE, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(run_dir: Path, summary: dict) -> Path:
    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = read_metrics(run_dir)
    figures = []
    for name, keys, title, ylabel, smooth in [
        ("skill_reward.png", _keys(rows, "skill_reward/"), "Intrinsic reward per step, by skill", "reward", 10),
        ("skill_usage.png", _keys(rows, "skill_usage/"), "Share of env steps, by skill", "share", 10),
        ("learner.png", ["learner_loss/loss", "learner_loss/entropy", "learner_loss/value_loss"],
         "Learner", "value", 5),
        ("annotation.png", _keys(rows, "labels_total/") + ["informative_labels_total"],
         "Labels per skill (and informative, non-tie, labels)", "labels", 1),
        ("tie_share.png", _keys(rows, "tie_share/") + ["tie_share", "dedup_hit_rate"],
         "Tie share of labels per skill; dedup hit rate", "share", 1),
        ("reward_probes.png", _keys(rows, "reward_probe_margin/"),
         "Reward-model probe margin: targets minus a neutral step", "margin (std)", 1),
        ("throughput.png", ["env_steps_per_second"], "Throughput", "env steps / s", 1),
    ]:
        if _plot(out / name, rows, keys, title, ylabel, smooth):
            figures.append((name, title))
    if _plot_competence(out / "competence.png", rows):
        figures.append(("competence.png", COMPETENCE_TITLE))
    last = {}
    for r in rows:
        last.update(r)
    _write_markdown(out / "summary.md", summary, last, figures)
    _write_html(out / "index.html", summary, last, figures, _evaluation_html(summary, out))
    return out / "index.html"


def _relative(path: str, report_dir: Path) -> str:
    import os

    return os.path.relpath(path, report_dir)


def _evaluation_html(summary: dict, report_dir: Path) -> str:
    parts = []
    for task, r in summary.get("evaluation", {}).items():
        files = r.get("files", {})
        parts.append(f"<h2>Evaluation: {html.escape(task)}</h2><p>{r['episodes']} episodes; success "
                     f"(proxy) {r['proxy']:.2f}, (exact) {r['exact']:.2f}; paper {r['paper']}</p>")
        if "chart" in files:
            parts.append(f'<img src="{_relative(files["chart"], report_dir)}" alt="{html.escape(task)} results">')
        if "replay_gif" in files:
            parts.append(f'<p>Replay of the first episode (<a href="{_relative(files["replay_html"], report_dir)}">'
                         f'step-by-step player</a>):</p><img src="{_relative(files["replay_gif"], report_dir)}" '
                         f'alt="replay">')
    return "\n".join(parts)


def _summary_rows(summary: dict, last: dict) -> list[tuple[str, str]]:
    lead = [(k, _fmt(last[k])) for k in ("informative_labels_total", "tie_share") if k in last]
    rows = lead + [(k, str(v)) for k, v in summary.items() if k != "evaluation"]
    for key in sorted(last):
        if key.startswith(("reward_probe_margin/", "tie_share/", "reward_model_accuracy/", "labels_total/")) or key in (
                "dedup_hit_rate", "labels_per_second", "policy_version", "reward_model_version"):
            value = last[key]
            rows.append((key, f"{value:.4g}" if isinstance(value, float) else str(value)))
    return rows


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _write_markdown(path: Path, summary: dict, last: dict, figures) -> None:
    lines = ["# mmotif run report", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _summary_rows(summary, last)]
    lines.append("")
    lines += [f"![{title}]({name})" for name, title in figures]
    path.write_text("\n".join(lines) + "\n")


def _write_html(path: Path, summary: dict, last: dict, figures, evaluation: str = "") -> None:
    table = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                      for k, v in _summary_rows(summary, last))
    images = "\n".join(f'<figure><img src="{n}" alt="{html.escape(t)}"><figcaption>{html.escape(t)}'
                       f"</figcaption></figure>" for n, t in figures)
    path.write_text(f"""<!doctype html><meta charset="utf-8"><title>mmotif run report</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}th{{text-align:left;padding-right:1em}}
img{{max-width:100%}}</style>
<h1>mmotif run report</h1><table>{table}</table>{images}
{evaluation}
""")
