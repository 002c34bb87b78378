"""Writes deploy/grafana-dashboard.json from `mmotif.runtime.metrics.METRICS`.

    python deploy/grafana_dashboard.py > deploy/grafana-dashboard.json

One panel per metric, grouped in rows; a metric not placed in LAYOUT lands in "Other", so
the dashboard always covers every metric. Series names are as Ray exports them: `ray_`
+ the metric name (counters keep their `_total` name as is). Prometheus datasource chosen
by the `datasource` variable; `SessionName` picks the Ray session (one per cluster start).
"""

from __future__ import annotations

import json
import sys

from mmotif.runtime.metrics import COUNTER, METRICS

LAYOUT = [
    ("Throughput", ["mmotif_env_steps_per_second", "mmotif_env_steps_total",
                    "mmotif_policy_version", "mmotif_policy_lag"]),
    ("Episodes and skills", ["mmotif_episode_score", "mmotif_episode_length",
                             "mmotif_skill_reward", "mmotif_skill_usage",
                             "mmotif_skill_switches"]),
    ("Learner", ["mmotif_learner_loss"]),
    ("Annotation", ["mmotif_labels_per_second", "mmotif_labels_total",
                    "mmotif_parse_failures_total", "mmotif_annotation_failures_total",
                    "mmotif_dedup_hit_rate"]),
    ("Reward models", ["mmotif_reward_model_version", "mmotif_reward_model_accuracy"]),
    ("Evaluation and health", ["mmotif_task_success", "mmotif_actor_restarts_total",
                               "mmotif_actor_replacements_total", "mmotif_env_rebuilds_total"]),
]
UNITS = {"mmotif_env_steps_per_second": "ops", "mmotif_env_steps_total": "ops",
         "mmotif_labels_per_second": "ops", "mmotif_labels_total": "ops",
         "mmotif_skill_usage": "percentunit", "mmotif_dedup_hit_rate": "percentunit",
         "mmotif_reward_model_accuracy": "percentunit", "mmotif_task_success": "percentunit"}
INCREASE_OF = {"mmotif_actor_restarts_total", "mmotif_parse_failures_total",
               "mmotif_annotation_failures_total", "mmotif_actor_replacements_total",
               "mmotif_env_rebuilds_total"}
MAX_OF = {"mmotif_policy_version", "mmotif_reward_model_version"}  # versions: newest
SELECTOR = '{SessionName=~"$SessionName"}'
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def query(m) -> tuple[str, str, str]:
    """(PromQL, legend, title) of one metric's panel."""
    series = f"ray_{m.name}{SELECTOR}"
    by = f" by ({', '.join(m.tags)})" if m.tags else ""
    legend = " ".join("{{" + t + "}}" for t in m.tags) or m.name.removeprefix("mmotif_")
    if m.kind == COUNTER:
        base = m.name.removeprefix("mmotif_").replace("_", " ")
        if m.name in INCREASE_OF:  # rare events: how many in the last 10 minutes
            return f"sum{by} (increase({series}[10m]))", legend, f"{base} (last 10 min)"
        return f"sum{by} (rate({series}[$__rate_interval]))", legend, f"{base} (rate per second)"
    agg = "max" if m.name in MAX_OF else "avg"
    return f"{agg}{by} ({series})", legend, m.name.removeprefix("mmotif_").replace("_", " ")


def dashboard() -> dict:
    by_name = {m.name: m for m in METRICS}
    placed = {n for _, names in LAYOUT for n in names}
    layout = [(row, [n for n in names if n in by_name]) for row, names in LAYOUT]
    other = [m.name for m in METRICS if m.name not in placed]
    if other:
        layout.append(("Other", other))
    panels, y, pid = [], 0, 1
    for row, names in layout:
        panels.append({"type": "row", "title": row, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, name in enumerate(names):
            m = by_name[name]
            expr, legend, title = query(m)
            panels.append({
                "type": "timeseries", "id": pid, "title": title,
                "description": f"{m.description} (`ray_{m.name}`, {m.kind}"
                               + (f", tags: {', '.join(m.tags)}" if m.tags else "") + ")",
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 8},
                "fieldConfig": {"defaults": {"unit": UNITS.get(name, "short")}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                            "tooltip": {"mode": "multi"}},
                "targets": [{"refId": "A", "datasource": DATASOURCE, "expr": expr,
                             "legendFormat": legend}],
            })
            pid += 1
        y += ((len(names) + 2) // 3) * 8
    return {
        "title": "mmotif", "uid": "mmotif-run", "tags": ["mmotif", "ray"],
        "description": "mmotif metrics exported by Ray (ray.util.metrics -> Prometheus); "
                       "names and tags: mmotif.runtime.metrics",
        "editable": True, "schemaVersion": 39, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "timezone": "browser",
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource",
             "query": "prometheus", "current": {}, "hide": 0},
            {"name": "SessionName", "label": "Ray session", "type": "query",
             "datasource": DATASOURCE, "refresh": 2, "includeAll": True, "multi": True,
             "allValue": ".+", "current": {"text": "All", "value": "$__all"},
             "definition": "label_values(ray_mmotif_env_steps_total, SessionName)",
             "query": {"query": "label_values(ray_mmotif_env_steps_total, SessionName)",
                       "refId": "SessionName"}},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


if __name__ == "__main__":
    json.dump(dashboard(), sys.stdout, indent=2)
    sys.stdout.write("\n")
