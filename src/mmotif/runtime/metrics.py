"""Every figure a user watches, as named metrics: exported through `ray.util.metrics` (Ray
dashboard / Prometheus, prefixed `ray_` by Ray's exporter) and mirrored to TensorBoard and a
JSON-lines log in the run folder.

Names and tags are part of mmotif's interface (the Grafana dashboard in deploy/ reads them).
"""

from __future__ import annotations

from dataclasses import dataclass

GAUGE, COUNTER = "gauge", "counter"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    description: str
    tags: tuple[str, ...] = ()


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("mmotif_env_steps_total", COUNTER, "env steps consumed by the learner"),
    MetricSpec("mmotif_env_steps_per_second", GAUGE, "env steps per second over the last 30 s"),
    # (no episode return: the intrinsic reward is computed on the learner, per batch, and
    # never summed per episode; `skill_reward` is its per-step mean)
    MetricSpec("mmotif_episode_score", GAUGE,
               "mean in-game score gained by finished episodes (the env reward; weight 0 in training)"),
    MetricSpec("mmotif_episode_length", GAUGE, "mean length of finished episodes (env steps)"),
    MetricSpec("mmotif_skill_reward", GAUGE, "mean intrinsic reward per step of a skill", ("skill",)),
    MetricSpec("mmotif_skill_usage", GAUGE, "fraction of env steps a skill was active", ("skill",)),
    MetricSpec("mmotif_skill_switches", GAUGE, "skill switches per finished episode"),
    MetricSpec("mmotif_policy_version", GAUGE, "newest published policy version"),
    MetricSpec("mmotif_policy_lag", GAUGE, "learner version minus the version that acted"),
    MetricSpec("mmotif_batches_dropped_for_lag_total", COUNTER,
               "rollouts the learner dropped: acted by a policy more than learner.max_policy_lag versions old"),
    MetricSpec("mmotif_learner_loss", GAUGE, "learner loss terms", ("term",)),
    MetricSpec("mmotif_labels_total", COUNTER, "preference labels committed to the store", ("skill",)),
    MetricSpec("mmotif_labels_per_second", GAUGE, "preference labels per second"),
    MetricSpec("mmotif_parse_failures_total", COUNTER, "annotator answers that did not parse"),
    MetricSpec("mmotif_annotation_failures_total", COUNTER,
               "annotator calls that failed (LLM/server error after retries); their pairs are re-sampled later"),
    MetricSpec("mmotif_dedup_hit_rate", GAUGE, "share of sampled pairs/captions served without an LLM call"),
    MetricSpec("mmotif_reward_model_version", GAUGE, "reward-model version used by the learner"),
    MetricSpec("mmotif_reward_model_accuracy", GAUGE, "held-out accuracy of the reward model", ("skill",)),
    MetricSpec("mmotif_actor_restarts_total", COUNTER, "rollout/annotator actors restarted", ("role",)),
    MetricSpec("mmotif_actor_replacements_total", COUNTER,
               "actors replaced by fresh ones (a rollout that raised; an actor Ray could not bring back)", ("role",)),
    MetricSpec("mmotif_env_rebuilds_total", COUNTER,
               "NetHack games rebuilt (a fresh NLE instance) after a reset that never reached the move loop"),
    MetricSpec("mmotif_task_success", GAUGE, "evaluation success rate of a task", ("task", "check")),
)
METRIC_NAMES = tuple(m.name for m in METRICS)


class MetricsSink:
    """Writes each record to `metrics.jsonl`, TensorBoard, and Ray's metrics (dashboard).

    A record is a flat dict; keys `<base>/<tag values, ":"-separated>` (e.g.
    `skill_reward/descender`, `task_success/gnomish:exact`) map to the metric
    `mmotif_<base>` with its tags set to those values.
    """

    def __init__(self, run_dir, use_ray: bool = True, use_tensorboard: bool = True, wandb=None):
        import json
        from pathlib import Path

        self._json = json
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        self._tb = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:  # tensorboard not installed: JSON lines and Ray only
                self._tb = None
        self._ray = _ray_metrics() if use_ray else {}
        self._wandb = wandb  # a WandbLogger (mmotif.runtime.wandb_logger) or None
        self._totals: dict[tuple, float] = {}
        self._gauges: dict[str, tuple] = {}  # key -> (metric, value, tags)
        self._last_refresh = 0.0

    def record(self, step: int, values: dict) -> None:
        import time

        row = {"step": int(step), "time": time.time(), **values}
        self._file.write(self._json.dumps(row) + "\n")
        for key, value in values.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if self._tb is not None:
                self._tb.add_scalar(key, value, step)
            self._to_ray(key, float(value))
        if self._wandb is not None:
            self._wandb.log(step, {k: v for k, v in values.items()
                                   if isinstance(v, (int, float)) and not isinstance(v, bool)})

    def _to_ray(self, key: str, value: float) -> None:
        base, _, tag_value = key.partition("/")
        spec = _SPEC_BY_KEY.get(base)
        if spec is None or spec.name not in self._ray:
            return
        metric = self._ray[spec.name]
        values = tag_value.split(":") if tag_value else []
        if len(values) != len(spec.tags):
            return  # a record without its tag values cannot be exported
        tags = dict(zip(spec.tags, values)) or None
        if spec.kind == COUNTER:  # records carry running totals; Ray counters take increments
            last = self._totals.get((key,), 0.0)
            if value > last:
                metric.inc(value - last, tags=tags)
                self._totals[(key,)] = value
        else:
            metric.set(value, tags=tags)
            self._gauges[key] = (metric, value, tags)

    def refresh(self, every_s: float = 5.0) -> None:
        """Re-set every gauge: Ray stops exporting a gauge that is not set for a while."""
        import time

        now = time.time()
        if now - self._last_refresh < every_s:
            return
        self._last_refresh = now
        for metric, value, tags in self._gauges.values():
            metric.set(value, tags=tags)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.close()
            self._wandb = None


# record key (before any "/tag") -> metric spec
_SPEC_BY_KEY = {m.name.removeprefix("mmotif_"): m for m in METRICS}


def _ray_metrics() -> dict:
    try:
        import ray
        from ray.util.metrics import Counter, Gauge
    except ImportError:
        return {}
    if not ray.is_initialized():
        return {}
    out = {}
    for m in METRICS:
        cls = Counter if m.kind == COUNTER else Gauge
        out[m.name] = cls(m.name, description=m.description, tag_keys=m.tags)
    return out
