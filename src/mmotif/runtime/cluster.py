"""Sizing a run from the Ray cluster it lands on: how many rollout actors, how many
annotators, where the learner runs, how a tensor-parallel vLLM annotator is placed.

Pure functions over plain dicts (the shape of `ray.available_resources()` /
`ray.cluster_resources()` / the `Resources` of `ray.nodes()`), so the logic is tested
without Ray. The driver calls them once at start and again when the autoscaler adds nodes:

    plan = plan_actors(cfg, ray.available_resources(), nodes=[n["Resources"] for n in ray.nodes() if n["Alive"]])
    RolloutActor.options(**rollout_actor_options(cfg)).remote(...)  # x plan.num_rollout_actors
    spec = annotator_placement_group(cfg.annotator.tensor_parallel_size)
    pg = ray.util.placement_group(**spec)                         # vLLM annotators, tp > 1
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, NamedTuple, Sequence

from mmotif.config import RunConfig

log = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

LEARNER_CPUS = 1.0
"""CPUs of the learner actor."""
REWARD_TRAINER_CPUS = 0.5
"""CPUs of the reward-model trainer actor (runs only when annotation is on)."""
VLLM_ANNOTATOR_CPUS = 1.0
"""CPUs of one vLLM annotator actor (the engine's scheduler/tokeniser process)."""


class ClusterSizingError(ValueError):
    """The cluster cannot hold what the config asks for; the message says what is missing."""


class ActorPlan(NamedTuple):
    num_rollout_actors: int
    num_annotators: int
    learner_device: str


def _num(resources: Mapping[str, Any], key: str) -> float:
    return float(resources.get(key, 0.0) or 0.0)


def dashboard_exposed(host: str) -> bool:
    return host.strip().strip("[]").lower() not in LOCAL_HOSTS


def warn_if_dashboard_exposed(cfg: RunConfig) -> bool:
    """Log a warning when `cluster.dashboard_host` binds beyond loopback; True if it does.

    The dashboard serves the Jobs API (anyone who reaches it can run code on the cluster),
    so it binds 127.0.0.1 unless the config says otherwise.
    """
    host = cfg.cluster.dashboard_host
    if not dashboard_exposed(host):
        return False
    log.warning(
        "dashboard exposed on %s: the Ray dashboard and its Jobs API (which runs arbitrary "
        "code) are reachable from other machines; keep it on 127.0.0.1 and use an SSH "
        "tunnel / `kubectl port-forward` unless the network is trusted "
        "(cluster.dashboard_host)", host,
    )
    return True


def learner_device(cfg: RunConfig, gpus: float) -> str:
    want = cfg.learner.device
    if want == "auto":
        return "cuda" if gpus >= 1 else "cpu"
    if want == "cuda" and gpus < 1:
        raise ClusterSizingError(
            "learner.device is 'cuda' but the cluster has no free GPU "
            f"(GPU: {gpus:g}); add a GPU worker or set learner.device to 'auto' or 'cpu'"
        )
    return want


def annotator_cpus(cfg: RunConfig) -> float:
    """CPUs one annotator actor holds: embedded = its threads, vLLM = 1, openai client = 0."""
    a = cfg.annotator
    if a.backend == "embedded":
        return float(a.threads)
    if a.backend == "vllm":
        return VLLM_ANNOTATOR_CPUS
    return 0.0


def annotator_gpus(cfg: RunConfig) -> int:
    """GPUs one annotator holds: tensor_parallel_size for vLLM, none otherwise."""
    return cfg.annotator.tensor_parallel_size if cfg.annotator.backend == "vllm" else 0


def plan_annotators(cfg: RunConfig, free_gpus: float,
                    node_gpus: Sequence[float] | None = None) -> int:
    """How many annotator actors to start.

    vLLM: as many as the free GPUs hold at `tensor_parallel_size` GPUs each, capped by
    `annotator.num_annotators` (`"auto"`, if the config allows it, means no cap). Each
    annotator's GPUs must sit on one node (STRICT_PACK), so with `node_gpus` given the count
    is also limited per node. CPU backends (embedded, openai): `num_annotators` as given.
    """
    want = cfg.annotator.num_annotators
    auto = want == "auto"
    if cfg.annotator.backend != "vllm":
        return 1 if auto else int(want)
    if not auto and int(want) == 0:
        return 0
    tp = cfg.annotator.tensor_parallel_size
    if node_gpus is not None:
        fit = sum(int(g // tp) for g in node_gpus)
        biggest = max(node_gpus, default=0.0)
    else:
        fit, biggest = int(free_gpus // tp), free_gpus
    fit = min(fit, int(free_gpus // tp))
    if fit == 0:
        raise ClusterSizingError(
            f"annotator.backend is 'vllm' with tensor_parallel_size={tp}, which needs {tp} GPUs "
            f"on one node, but only {free_gpus:g} GPUs are free (largest node: {biggest:g}); "
            "add a GPU node with enough GPUs, lower annotator.tensor_parallel_size, or use "
            "annotator.backend 'openai'/'embedded'"
        )
    return fit if auto else min(fit, int(want))


def plan_actors(cfg: RunConfig, ray_cluster_resources: Mapping[str, Any], *,
                nodes: Sequence[Mapping[str, Any]] | None = None,
                driver_cpus: float = 0.0) -> ActorPlan:
    """(num_rollout_actors, num_annotators, learner_device) for this cluster.

    `ray_cluster_resources`: `ray.available_resources()` at driver start (the job
    entrypoint's own reservation is then already deducted), or `ray.cluster_resources()`
    with the entrypoint's CPUs in `driver_cpus`. `nodes`: each alive node's resources
    (`ray.nodes()[i]["Resources"]`), used to check that a tensor-parallel annotator fits on
    one node.

    The learner gets one GPU if there is one (`learner.device: auto`), and `LEARNER_CPUS`.
    Annotators take GPUs in groups of `tensor_parallel_size` (vLLM) or CPUs (embedded); with
    annotation on, the reward trainer takes `REWARD_TRAINER_CPUS`.
    With `actors.num_actors: auto`, the CPUs left over go to rollout actors,
    `actors.threads_per_actor` each (at least one actor). A fixed number is used as given,
    with a warning when the cluster cannot hold it all at once.
    """
    warn_if_dashboard_exposed(cfg)
    cpus = _num(ray_cluster_resources, "CPU") - driver_cpus
    gpus = _num(ray_cluster_resources, "GPU")
    device = learner_device(cfg, gpus)
    learner_gpus = 1.0 if device == "cuda" else 0.0

    node_gpus = None
    if nodes is not None:
        node_gpus = [_num(n, "GPU") for n in nodes]
        if learner_gpus and any(g >= 1 for g in node_gpus):
            # the learner takes one GPU from the node where that costs the fewest
            # annotator groups (tensor-parallel ranks must share a node)
            tp = max(1, annotator_gpus(cfg))

            def groups_left(i: int) -> int:
                return sum(int((g - (k == i)) // tp) for k, g in enumerate(node_gpus))

            best = max((i for i, g in enumerate(node_gpus) if g >= 1), key=groups_left)
            node_gpus[best] -= 1
    num_annotators = plan_annotators(cfg, gpus - learner_gpus, node_gpus)

    reserved = LEARNER_CPUS + num_annotators * annotator_cpus(cfg)
    if num_annotators:
        reserved += REWARD_TRAINER_CPUS
    per_actor = float(cfg.actors.threads_per_actor)
    free = cpus - reserved
    if cfg.actors.num_actors == "auto":
        num_rollout = max(1, math.floor(free / per_actor + 1e-9))
        if cfg.actors.max_actors is not None:
            num_rollout = min(num_rollout, cfg.actors.max_actors)
        if free < per_actor:
            log.warning(
                "only %.3g CPUs free after the learner (%.3g) and %d annotator(s) + reward "
                "trainer (%.3g); "
                "starting 1 rollout actor anyway (%d CPUs each): it waits for a CPU",
                max(free, 0.0), LEARNER_CPUS, num_annotators, reserved - LEARNER_CPUS,
                cfg.actors.threads_per_actor,
            )
    else:
        num_rollout = int(cfg.actors.num_actors)
        if num_rollout * per_actor > free + 1e-9:
            log.warning(
                "actors.num_actors=%d needs %.3g CPUs but %.3g are free after the learner and "
                "annotators; the extra actors wait until the autoscaler adds CPUs",
                num_rollout, num_rollout * per_actor, max(free, 0.0),
            )
    return ActorPlan(num_rollout, num_annotators, device)


def role_options(cfg: RunConfig, role: str) -> dict[str, Any]:
    """`.options(resources=...)` of an actor role from `cluster.actor_resources` (nothing
    when the config pins no custom resource for `role`)."""
    wants = cfg.cluster.actor_resources.get(role)
    return {"resources": dict(wants)} if wants else {}


def rollout_actor_options(cfg: RunConfig) -> dict[str, Any]:
    """`.options(...)` for a rollout actor: its CPUs, spread over the nodes.

    SPREAD matters: Ray's default policy fills the driver's node first, so without it a run
    on a multi-node cluster puts its first actors next to the learner.
    """
    return {"num_cpus": cfg.actors.threads_per_actor, "scheduling_strategy": "SPREAD",
            **role_options(cfg, "rollout")}


def annotator_placement_group(tp: int, cpus_per_bundle: float = VLLM_ANNOTATOR_CPUS) -> dict[str, Any]:
    """Placement-group spec for one vLLM annotator with tensor parallelism `tp`.

    One bundle per rank, each one GPU (the first bundle also holds the annotator actor's CPU),
    STRICT_PACK so all ranks share one node (NVLink / PCIe, no cross-node all-reduce). Pass it
    to `ray.util.placement_group(**spec)`, create the annotator actor in bundle 0 with
    `PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)`, and
    vLLM's Ray executor places its `tp` workers in the group's bundles.
    """
    if tp < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tp}")
    bundles = [{"GPU": 1.0, "CPU": cpus_per_bundle if rank == 0 else 0.0} for rank in range(tp)]
    for b in bundles:
        if not b["CPU"]:
            del b["CPU"]
    return {"bundles": bundles, "strategy": "STRICT_PACK", "name": f"mmotif-annotator-tp{tp}"}


def new_rollout_actors(cfg: RunConfig, available: Mapping[str, Any], running: int) -> int:
    """How many rollout actors to add when the autoscaler brought CPUs (`available` =
    `ray.available_resources()` now, with the running actors' CPUs already taken).
    Only with `actors.num_actors: auto`, and never past `actors.max_actors`; a fixed count
    never grows."""
    if cfg.actors.num_actors != "auto":
        return max(0, int(cfg.actors.num_actors) - running)
    fit = max(0, math.floor(_num(available, "CPU") / cfg.actors.threads_per_actor + 1e-9))
    if cfg.actors.max_actors is not None:
        fit = min(fit, max(0, cfg.actors.max_actors - running))
    return fit


def autoscaler_bundles(cfg: RunConfig, plan: ActorPlan) -> list[dict[str, float]]:
    """What to ask the autoscaler for (`ray.autoscaler.sdk.request_resources(bundles=...)`):
    the learner, the annotators and reward trainer of `plan`, and `actors.max_actors` rollout
    actors. Empty without `actors.max_actors` or with a fixed `num_actors` (nothing to grow)."""
    a = cfg.actors
    if a.num_actors != "auto" or a.max_actors is None:
        return []
    pinned = cfg.cluster.actor_resources  # custom resources tell the autoscaler which node type to launch
    learner = {"CPU": float(LEARNER_CPUS), **({"GPU": 1.0} if plan.learner_device == "cuda" else {}),
               **pinned.get("learner", {})}
    bundles = [learner]
    if plan.num_annotators:
        if cfg.annotator.backend == "vllm":
            for _ in range(plan.num_annotators):
                group = annotator_placement_group(cfg.annotator.tensor_parallel_size)["bundles"]
                group[0].update(pinned.get("annotator", {}))
                bundles += group
        else:
            bundles += [{"CPU": float(annotator_cpus(cfg)), **pinned.get("annotator", {})}] * plan.num_annotators
        bundles.append({"CPU": float(REWARD_TRAINER_CPUS), **pinned.get("reward_trainer", {})})
    return bundles + [{"CPU": float(a.threads_per_actor), **pinned.get("rollout", {})}] * a.max_actors
