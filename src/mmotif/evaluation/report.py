"""The run report: PNG plots from `metrics.jsonl` and a summary page (HTML + Markdown).

    <run_dir>/report/annotation.png        labels per skill, informative (non-tie) labels
    <run_dir>/report/tie_share.png         tie share per skill | dedup hit rate
    <run_dir>/report/reward_probes.png     probe margin per skill and reward-model version
    <run_dir>/report/competence.png        per-skill outcome rates vs uniform-random actions
    <run_dir>/report/skill_reward.png      per-skill intrinsic reward per step
    <run_dir>/report/skill_usage.png       share of env steps per skill
    <run_dir>/report/learner.png           loss | entropy | value loss | policy lag
    <run_dir>/report/throughput.png        env steps/s over the last 30 s
    <run_dir>/report/index.html, summary.md

Every axis carries one quantity. The page also says what produced the run: its config, the
git revision, package versions and the machine.
"""

from __future__ import annotations

import html
import json
import math
import os
import sqlite3
from pathlib import Path

from mmotif.evaluation.intervals import wilson_interval

COMPETENCE_TITLE = "Skill competence: events per 1,000 steps of the skill (dashed: random actions)"


def _pyplot():
    """matplotlib's pyplot on the file-only backend, or None without the `plots` extra."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def _last_value(rows: list[dict], key: str) -> float | None:
    _, ys = _series(rows, key)
    return ys[-1] if ys else None


def _smoothed(ys: list[float], window: int) -> list[float]:
    if window <= 1 or len(ys) <= window:
        return ys
    return [sum(ys[max(0, i - window + 1): i + 1]) / len(ys[max(0, i - window + 1): i + 1]) for i in range(len(ys))]


# -- plots -------------------------------------------------------------------------------------
# A panel is (subtitle, keys, y-axis label, smoothing window): one quantity per axis.
SHARE_LABELS = {"share of labels", "share of pairs", "share of steps"}  # drawn on 0..1


def _draw_panel(ax, rows: list[dict], keys: list[str], ylabel: str, smooth: int) -> bool:
    drawn = False
    for key in keys:
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, _smoothed(ys, smooth), label=key.split("/", 1)[-1], linewidth=1.2)
            drawn = True
    ax.set_xlabel("env steps", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    if ylabel in SHARE_LABELS:  # a constant share would otherwise get an axis around itself
        ax.set_ylim(-0.02, 1.02)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if len(keys) > 1 and drawn:
        ax.legend(fontsize=7, loc="best")
    return drawn


def _plot_panels(path: Path, rows: list[dict], title: str, panels: list[tuple]) -> bool:
    panels = [p for p in panels if any(_series(rows, k)[0] for k in p[1])]
    plt = _pyplot()
    if not panels or plt is None:
        return False
    cols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(7 if cols == 1 else 10, 3.2 * nrows + 0.4), dpi=110,
                             squeeze=False)
    for ax, (subtitle, keys, ylabel, smooth) in zip(axes.flat, panels):
        _draw_panel(ax, rows, keys, ylabel, smooth)
        if subtitle:
            ax.set_title(subtitle, fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _plot(path: Path, rows: list[dict], keys: list[str], title: str, ylabel: str, smooth: int = 1) -> bool:
    return _plot_panels(path, rows, title, [("", keys, ylabel, smooth)])


def _plot_competence(path: Path, rows: list[dict]) -> bool:
    """One subplot per `<skill>:<event>` the run recorded (`competence/`, over the run, and
    `competence_recent/`, over recent episodes), with the random-action rate of the same
    schedule as a dashed line (`competence_random/`), or, for a skill the random games never
    reached, the random rate over all steps as a dotted line (`competence_random_any/`)."""
    names = sorted({k.split("/", 1)[1] for k in _keys(rows, "competence/") + _keys(rows, "competence_recent/")})
    plt = _pyplot()
    if not names or plt is None:
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


def _figure_specs(rows: list[dict]) -> list[tuple[str, str, str, list[tuple]]]:
    """(file, title, what it shows, panels), in the order of the page."""
    return [
        ("annotation.png", "Labels", "Labels committed per skill, and informative (non-tie) labels over all skills.",
         [("", _keys(rows, "labels_total/") + ["informative_labels_total"], "labels", 1)]),
        ("tie_share.png", "Ties and deduplication",
         "Left: share of each skill's labels that are ties (a tie teaches the reward model nothing). "
         "Right: share of sampled pairs served without an LLM call.",
         [("tie share of labels", _keys(rows, "tie_share/") + ["tie_share"], "share of labels", 1),
          ("dedup hit rate", ["dedup_hit_rate"], "share of pairs", 1)]),
        ("reward_probes.png", "Reward-model probe margin",
         "Per published reward-model version: mean score of the skill's target events minus a neutral "
         "step, in standard deviations. Positive: the model prefers what the description asks for.",
         [("", _keys(rows, "reward_probe_margin/"), "margin (std)", 1)]),
        ("skill_reward.png", "Intrinsic reward", "Mean intrinsic reward per step of each skill (smoothed).",
         [("", _keys(rows, "skill_reward/"), "reward per step", 10)]),
        ("skill_usage.png", "Skill usage", "Share of env steps each skill was active (smoothed).",
         [("", _keys(rows, "skill_usage/"), "share of steps", 10)]),
        ("learner.png", "Learner", "APPO/V-trace loss terms and the policy lag of the trained rollouts.",
         [("total loss", ["learner_loss/loss"], "loss", 5), ("entropy", ["learner_loss/entropy"], "nats", 5),
          ("value loss", ["learner_loss/value_loss"], "loss", 5),
          ("policy lag", ["policy_lag"], "versions", 5)]),
        ("throughput.png", "Throughput", "Env steps per second over the last 30 s.",
         [("", ["env_steps_per_second"], "env steps / s", 1)]),
    ]


# -- numbers -----------------------------------------------------------------------------------


def _interval_text(mean: float, se: float, n: int, unit: str) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if unit == "rate":
        lo, hi = wilson_interval(round(mean * n), n)
        return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"
    return f"{mean:.3g} ± {1.96 * (se or 0.0):.2g}"


def evaluation_rows(summary: dict) -> list[dict]:
    """One row per evaluated task: success with a 95% interval (Wilson for rates, ±1.96 SE for
    counts), the paper's number, and the files (chart, replays)."""
    rows = []
    for task, r in summary.get("evaluation", {}).items():
        files = r.get("files", {})
        full = _read_json(files.get("json")).get("summary", {})
        n, unit = int(r.get("episodes", full.get("episodes", 0))), full.get("unit", "rate")
        cells = {}
        for check in ("proxy", "exact"):
            stat = full.get(check, {"mean": r.get(check), "se": None})
            cells[check] = _interval_text(stat.get("mean"), stat.get("se"), n, unit)
        paper = full.get("paper", {"mean": r.get("paper")})
        rows.append({"task": task, "episodes": n, "unit": unit, **cells,
                     "paper": "–" if paper.get("mean") is None else f"{paper['mean']:.3g}", "files": files})
    return rows


def _read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def label_rows(run_dir: Path, last: dict) -> list[dict]:
    """Per skill: labels, informative (non-tie) labels, ties, tie share, and the newest reward
    model's probe margin and held-out accuracy. Counts from the preference store (read-only),
    else from the last metrics."""
    counts = _store_counts(run_dir / "preferences.sqlite")
    skills = sorted(set(counts) | {k.split("/", 1)[1] for k in last if k.startswith("labels_total/")})
    rows = []
    for skill in skills:
        total, ties, known = counts.get(skill, (int(last.get(f"labels_total/{skill}", 0)), None, None))
        share = ties / known if known else last.get(f"tie_share/{skill}")
        rows.append({
            "skill": skill, "labels": total,
            "informative": None if known is None else known - ties, "ties": ties, "tie_share": share,
            "probe_margin": last.get(f"reward_probe_margin/{skill}"),
            "accuracy": last.get(f"reward_model_accuracy/{skill}"),
        })
    return rows


def _store_counts(path: Path) -> dict[str, tuple[int, int, int]]:
    """skill -> (labels, ties, known labels); read-only, so the report never writes the store."""
    from mmotif.contract import LABEL_TIE, LABEL_UNKNOWN

    if not path.is_file():
        return {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT skill, COUNT(*), SUM(label = ?), SUM(label != ?) FROM preferences "
                                 "GROUP BY skill", (LABEL_TIE, LABEL_UNKNOWN)).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return {}
    return {skill: (int(n), int(t or 0), int(k or 0)) for skill, n, t, k in found}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def run_rows(summary: dict) -> list[tuple[str, str]]:
    versions = summary.get("reward_model_versions") or []
    rows = [
        ("status", summary.get("status")),
        ("env steps", summary.get("env_steps")),
        ("wall time", f"{summary['wall_s']:,.0f} s" if "wall_s" in summary else None),
        ("env steps / s (whole run)", summary.get("env_steps_per_s")),
        ("episodes", summary.get("episodes")),
        ("labels (all)", summary.get("labels")),
        ("reward-model versions", f"{len(versions)} (newest v{versions[-1]})" if versions else "none (constant)"),
    ]
    return [(k, _fmt(v)) for k, v in rows if v is not None]


OTHER_METRICS = ("labels_per_second", "dedup_hit_rate", "annotator_cache_hit_rate", "parse_failures_total",
                 "annotation_failures_total", "policy_version",
                 "batches_dropped_for_lag_total", "episode_length", "skill_switches")


# -- the page ----------------------------------------------------------------------------------


def write_report(run_dir: Path, summary: dict) -> Path:
    from mmotif.evaluation.environment import describe

    run_dir = Path(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = read_metrics(run_dir)
    figures = [(name, title, what) for name, title, what, panels in _figure_specs(rows)
               if _plot_panels(out / name, rows, title, panels)]
    if _plot_competence(out / "competence.png", rows):
        figures.insert(3, ("competence.png", "Skill competence",
                           "Per-skill outcome rates per 1,000 steps of that skill, against uniformly random "
                           "actions under the same policy over skills (dashed)."))
    last = {}
    for r in rows:
        last.update(r)
    page = {
        "summary": summary, "run": run_rows(summary), "labels": label_rows(run_dir, last),
        "evaluation": evaluation_rows(summary), "figures": figures, "environment": describe(),
        "other": [(k, _fmt(last[k], 4)) for k in OTHER_METRICS if k in last],
        "config": _read_text(run_dir / "config.yaml"),
    }
    page["config_rows"] = config_rows(page["config"])
    (out / "summary.md").write_text(_markdown(page, out))
    (out / "index.html").write_text(_html(page, run_dir, out))
    return out / "index.html"


def config_rows(text: str) -> list[tuple[str, str]]:
    """The fields a reader asks first: preset, budget, scale, annotator, network."""
    import yaml

    try:
        cfg = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return []
    get = lambda *path: _dig(cfg, path)  # noqa: E731
    rows = [("preset", get("name")), ("seed", get("seed")), ("time limit (s)", get("time_limit_s")),
            ("total env steps", get("learner", "total_env_steps")),
            ("rollout actors × envs", f"{get('actors', 'num_actors')} × {get('actors', 'envs_per_actor')}"),
            ("annotator", f"{get('annotator', 'backend')} {get('annotator', 'model') or ''} "
                          f"({get('annotator', 'mode')})"),
            ("skills", ", ".join(s.get("name", "?") for s in get("skills") or [])),
            ("learner", f"lr {get('learner', 'lr')}, batch {get('learner', 'batch_size')}, "
                        f"device {get('learner', 'device')}")]
    return [(k, _fmt(v)) for k, v in rows if v is not None]


def _dig(data, path):
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _relative(path: str | Path, report_dir: Path) -> str:
    return os.path.relpath(path, report_dir)


LABEL_HEADERS = ("skill", "labels", "informative", "ties", "tie share", "probe margin", "RM accuracy")
EVAL_HEADERS = ("task", "episodes", "success (proxy) [95% CI]", "success (exact) [95% CI]", "paper")


def _label_cells(r: dict) -> list[str]:
    share = "–" if r["tie_share"] is None else f"{r['tie_share']:.0%}"
    return [r["skill"], _fmt(r["labels"]), _fmt(r["informative"]), _fmt(r["ties"]), share,
            _fmt(r["probe_margin"]), _fmt(r["accuracy"])]


def _eval_cells(r: dict) -> list[str]:
    return [r["task"], str(r["episodes"]), r["proxy"], r["exact"], r["paper"]]


def _environment_rows(env: dict) -> list[tuple[str, str]]:
    rows = [("git revision", env.get("git") or "not a git checkout")]
    rows += [(f"{name}", version) for name, version in env.get("packages", {}).items()]
    rows += [(f"machine: {k}", v) for k, v in env.get("machine", {}).items()]
    return rows


def _html_table(headers, body: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    lines = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>'


def _html_pairs(pairs) -> str:
    return "<table class=\"kv\">" + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in pairs) + "</table>"


def _evaluation_html(rows: list[dict], report_dir: Path) -> str:
    if not rows:
        return "<p>No evaluation in this run (<code>evaluation.tasks</code> empty, or the run was stopped).</p>"
    parts = [_html_table(EVAL_HEADERS, [_eval_cells(r) for r in rows], "num"),
             "<p class=note>Rates: Wilson 95% interval over the episodes. Counts: mean ± 1.96 standard "
             "errors. Proxy and exact are two success rules of the same task (see the task catalog); "
             "the paper's number is MaestroMotif's.</p>"]
    for r in rows:
        files, task = r["files"], html.escape(r["task"])
        if "chart" in files:
            parts.append(f'<figure><img src="{_relative(files["chart"], report_dir)}" alt="{task} results">'
                         f"<figcaption>{task}: proxy, exact and the paper's value</figcaption></figure>")
        if "replay_gif" in files:
            player = _relative(files.get("replay_html", files["replay_gif"]), report_dir)
            parts.append(f'<p>Replay of the first {task} episode (<a href="{player}">step-by-step player</a>):</p>'
                         f'<img class=replay src="{_relative(files["replay_gif"], report_dir)}" alt="replay">')
    return "\n".join(parts)


def _links_html(run_dir: Path, report_dir: Path) -> str:
    links = [("tensorboard/", "TensorBoard logs", f"tensorboard --logdir {run_dir / 'tensorboard'}"),
             ("metrics.jsonl", "every metric, one JSON line per record", None),
             ("config.yaml", "the resolved config", f"mmotif run --config {run_dir / 'config.yaml'}"),
             ("preferences.sqlite", "every label", None), ("captions.jsonl", "captions the LLM read", None),
             ("eval/", "evaluation results and replays", None)]
    items = []
    for name, what, command in links:
        if not (run_dir / name.rstrip("/")).exists():
            continue
        cmd = f" — <code>{html.escape(command)}</code>" if command else ""
        items.append(f'<li><a href="{_relative(run_dir / name, report_dir)}">{html.escape(name)}</a>: '
                     f"{html.escape(what)}{cmd}</li>")
    return "<ul>" + "".join(items) + "</ul>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .8em;border-bottom:1px solid #eee}
thead th{border-bottom:2px solid #ccc;text-align:left}table.num td+td{text-align:right}
table.kv th{text-align:left;font-weight:normal;color:#555}
figure{margin:1em 0}img{max-width:100%}img.replay{max-width:480px;image-rendering:pixelated}
figcaption,.note{color:#555;font-size:.9em}pre{background:#f6f6f6;padding:.8em;overflow:auto;max-height:30em}
code{background:#f3f3f3;padding:0 .2em}"""


NO_PLOTS = ("<p>No plots: there are no metrics yet, or matplotlib is not installed "
            "(<code>pip install 'mmotif[plots]'</code>).</p>")


def _html(page: dict, run_dir: Path, report_dir: Path) -> str:
    labels = page["labels"]
    label_part = (_html_table(LABEL_HEADERS, [_label_cells(r) for r in labels], "num") if labels
                  else "<p>No labels (annotation off, or none committed).</p>")
    figures = "\n".join(
        f'<figure><img src="{n}" alt="{html.escape(t)}"><figcaption><b>{html.escape(t)}.</b> '
        f"{html.escape(w)}</figcaption></figure>" for n, t, w in page["figures"])
    config = (f"<h3>Config</h3>{_html_pairs(page['config_rows'])}"
              f"<details><summary>the whole config.yaml ({len(page['config'].splitlines())} lines)</summary>"
              f"<pre>{html.escape(page['config'])}</pre></details>") if page["config"] else ""
    return f"""<!doctype html><meta charset="utf-8"><title>mmotif run report: {html.escape(run_dir.name)}</title>
<style>{STYLE}</style>
<h1>mmotif run report</h1><p class=note>{html.escape(str(run_dir))}</p>
{_html_pairs(page["run"])}
<h2>Labels: informative and ties</h2>
{label_part}
<p class=note>Informative labels prefer one moment of a pair; ties (and unknown answers) teach the
reward model nothing. Probe margin and accuracy are those of the newest reward-model version.</p>
<h2>Evaluation</h2>
{_evaluation_html(page["evaluation"], report_dir)}
<h2>Plots</h2>
{figures or NO_PLOTS}
<h2>Other numbers (last recorded)</h2>
{_html_pairs(page["other"])}
<h2>Files</h2>
{_links_html(run_dir, report_dir)}
<h2>What produced this run</h2>
{_html_pairs(_environment_rows(page["environment"]))}
<p class=note>The machine is the one that ran the driver and wrote this report.</p>
{config}
"""


def _md_table(headers, body) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in body]


def _markdown(page: dict, report_dir: Path) -> str:
    lines = ["# mmotif run report", ""] + _md_table(("", ""), page["run"]) + ["", "## Labels", ""]
    lines += _md_table(LABEL_HEADERS, [_label_cells(r) for r in page["labels"]])
    if page["evaluation"]:
        lines += ["", "## Evaluation (95% intervals: Wilson for rates, ±1.96 SE for counts)", ""]
        lines += _md_table(EVAL_HEADERS, [_eval_cells(r) for r in page["evaluation"]])
    lines += ["", "## Plots", ""] + [f"![{t}]({n})" for n, t, _ in page["figures"]]
    lines += ["", "## What produced this run", ""] + _md_table(("", ""), _environment_rows(page["environment"]))
    lines += ["", "## Config", ""] + _md_table(("", ""), page["config_rows"])
    return "\n".join(lines) + "\n"
