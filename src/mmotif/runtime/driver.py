"""The driver of `mmotif run`: starts or joins Ray, places the actors, and runs the loop.

    rollout actors --trajectories--> learner --weights (versioned)--> rollout actors
    rollout actors --captions--> pair sampler --pairs--> annotators --labels--> store
    store --> reward trainer --reward models (versioned)--> learner

Nothing on the rollout path waits for the LLM: annotation and reward training are
in-flight Ray calls the loop checks without blocking. Trajectories record the policy
version that produced them and learner stats the reward-model version that scored them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from mmotif.annotators.sampler import PairSampler
from mmotif.checkpoint import load_network, newest_complete_checkpoint, save_checkpoint
from mmotif.config import ConfigError, RunConfig
from mmotif.contract import EnvRebuild, append_captions
from mmotif.rewards.store import PreferenceStore
from mmotif.runtime.cluster import (
    LEARNER_CPUS, REWARD_TRAINER_CPUS, annotator_cpus, annotator_placement_group, autoscaler_bundles,
    new_rollout_actors, plan_actors, role_options, rollout_actor_options,
)
from mmotif.runtime.metrics import MetricsSink
from mmotif.runtime.progress import Progress, WindowedRate
from mmotif.runtime.resume import check_resumable, load_checkpoint
from mmotif.runtime.wandb_logger import wandb_logger
from mmotif.evaluation.report import write_report
from mmotif.runtime.shells import AnnotatorActor, LearnerActor, RewardTrainerActor, RolloutActor
from mmotif.skills.competence import CompetenceTally, WindowTally, metric_values
from mmotif.storage import RunStorage

log = logging.getLogger("mmotif")

GROWTH_CHECK_S = 10.0  # how often a run with `actors.num_actors: auto` looks for new CPUs
COMPETENCE_WINDOW_STEPS = 200_000  # env steps of recent episodes behind `competence_recent/`
BASELINE_WAIT_S = 120.0  # at the end, how long the report waits for the random baseline
MIN_ANNOTATE_INTERVAL_S = 0.5  # per annotator, between the starts of two calls
RETRAIN_CHECK_INTERVAL_S = 2.0  # between asking the reward trainer whether a retrain is due
REFILL_CHUNK = 5000  # labels per call when a (restarted) reward trainer is refilled
TIE_WARNING_SHARE = 0.9  # a skill whose labels are mostly ties teaches its reward model nothing
TIE_WARNING_MIN_LABELS = 200
MAX_PING_FAILURES = 3  # `ready` pings failed in a row: Ray cannot bring the actor back (restarts spent)


def _cause_line(err: Exception) -> str:
    """One line naming what a failed Ray call raised (the remote exception, not Ray's wrapper)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        text = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {text[0][:600]}" if text else type(cause).__name__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1][:600]}" if text else type(err).__name__


def _run_folder(path: Path) -> Path:
    """The run folder, created if missing; a path that is a file (or cannot be made) is a bad
    `paths.run_dir`, refused in one line."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"paths.run_dir: {path} is a file, not a folder; name a new or existing run folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"paths.run_dir: cannot create the run folder {path} ({err.strerror or err})") from None
    return path


class TrainingStopped(RuntimeError):
    """The learner refused to go on (NaN/Inf); a checkpoint was written."""


@dataclass
class RunCounters:
    started_at: float = field(default_factory=time.time)
    steps_at_start: int = 0  # env steps already done when this process started (resume)
    env_steps: int = 0
    batches_dropped_for_lag: int = 0
    batches_lost: int = 0  # trajectories whose node died before the learner fetched them
    labels: int = 0
    tie_shares: dict = field(default_factory=dict)  # skill -> (ties, known labels), from the store
    label_seconds: float = 0.0
    parse_failures: int = 0
    reward_versions: list = field(default_factory=list)
    episodes: int = 0
    actor_restarts: int = 0  # rollout actors
    actor_replacements: int = 0  # rollout actors replaced by fresh ones (see Driver._replace_rollout_actor)
    env_rebuilds: int = 0  # games rebuilt after a reset that never reached the move loop
    annotator_restarts: int = 0
    reward_trainer_restarts: int = 0
    reward_trainer_refills: int = 0
    annotation_failures: int = 0  # calls that raised (the LLM/server failed), actor alive
    storage_failures: int = 0  # uploads to paths.storage that failed (retried at the next checkpoint)


class Driver:
    def __init__(self, cfg: RunConfig, resume: bool = False, with_annotation: bool = True):
        self.cfg = cfg
        self.run_dir = _run_folder(Path(cfg.paths.run_dir).expanduser())
        self.storage = RunStorage(cfg.paths.storage, self.run_dir) if cfg.paths.storage else None
        self._uploader = ThreadPoolExecutor(1, thread_name_prefix="mmotif-storage") if self.storage else None
        self._upload = None  # the running upload's future
        if resume and self.storage is not None and newest_complete_checkpoint(self.run_dir) is None:
            self.storage.download()  # a fresh head: the run lives on in its durable copy
        if resume:  # refuse a config that cannot continue the run before overwriting its config.yaml
            check_resumable(self.run_dir, cfg)
        (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
        self.resume = resume
        self.with_annotation = with_annotation and cfg.annotator.num_annotators != 0
        self.counters = RunCounters()
        self.store_path = self.run_dir / "preferences.sqlite"
        self.reward_root = self.run_dir / "rewards"
        self.rng = np.random.default_rng(cfg.seed)
        self._stop_requested, self._stopped_by = False, ""
        self._pending: dict = {}  # trajectory ref -> (rollout actor, ref of its side log)
        self._last_rollout_at: dict = {}  # rollout actor -> when it last finished a rollout

    # -- setup ---------------------------------------------------------------------------
    def _start_ray(self) -> None:
        c = self.cfg.cluster
        if ray.is_initialized():
            return
        kwargs = dict(include_dashboard=True, dashboard_host=c.dashboard_host,
                      logging_level=logging.WARNING, log_to_driver=True)
        if c.address:
            context = ray.init(address=c.address, **kwargs)
        else:
            # Locally, every actor gets a logical CPU even when the machine has fewer cores:
            # NLE stepping, the learner and the LLM then share the cores. address="local": a
            # fresh instance, never a cluster another process left running on this machine.
            n = self.cfg.actors.num_actors
            needed = (n if isinstance(n, int) else 1) * self.cfg.actors.threads_per_actor + 3
            context = ray.init(address="local", num_cpus=c.num_cpus or max(os.cpu_count() or 1, needed),
                               num_gpus=c.num_gpus, **kwargs)
        # the real address: Ray takes another port when 8265 is in use
        url = getattr(context, "dashboard_url", None)
        self.dashboard_url = f"http://{url}" if url and "://" not in url else url or None
        print(f"mmotif: Ray dashboard at {self.dashboard_url}" if self.dashboard_url
              else "mmotif: no Ray dashboard (is ray[default] installed?)", flush=True)

    def _place_actors(self, learner_state: dict | None) -> None:
        cfg, cfg_data = self.cfg, self.cfg.model_dump(mode="json")
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        plan = plan_actors(cfg, ray.available_resources(), nodes=nodes)
        self.plan = plan
        self._request_autoscaling(plan)
        self.learner = LearnerActor.options(
            num_cpus=LEARNER_CPUS, num_gpus=1 if plan.learner_device == "cuda" else 0, **role_options(cfg, "learner"),
        ).remote(cfg_data, learner_state)
        # actor -> its `ready` ping: an actor gets no work until it answers (new or restarted)
        self._awaiting: dict = {}
        self._ping_failures: dict = {}  # actor -> `ready` pings failed in a row
        self._died: set = set()  # rollout actors restarting: reseeded when they answer
        self._surplus_seen = 0
        self._next_growth_check = time.time() + GROWTH_CHECK_S
        self.actors = []
        self._add_rollout_actors(plan.num_rollout_actors)
        self.annotators, self.reward_trainer = [], None
        if self.with_annotation and plan.num_annotators:
            self.annotators = [self._new_annotator(cfg_data) for _ in range(plan.num_annotators)]
            self.reward_trainer = RewardTrainerActor.options(
                num_cpus=REWARD_TRAINER_CPUS, **role_options(cfg, "reward_trainer")).remote(cfg_data)
        self.with_annotation = bool(self.annotators)

    def _request_autoscaling(self, plan) -> None:
        """With `actors.max_actors`, asks the autoscaler for the whole plan at that size; the
        actors then grow onto the nodes as they join (`_grow_with_the_cluster`)."""
        bundles = autoscaler_bundles(self.cfg, plan)
        if bundles:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=bundles)
            log.info("asked the autoscaler for %d bundles (%d rollout actors at most)",
                     len(bundles), self.cfg.actors.max_actors)

    def _add_rollout_actors(self, n: int) -> None:
        for _ in range(n):
            self.actors.append(self._new_rollout_actor(len(self.actors)))

    def _new_rollout_actor(self, i: int):
        cfg_data = self.cfg.model_dump(mode="json")
        actor = RolloutActor.options(**rollout_actor_options(self.cfg)).remote(cfg_data, i, self.cfg.seed * 1000 + i)
        self._awaiting[actor] = actor.ready.remote()
        return actor

    def _grow_with_the_cluster(self) -> None:
        """With `actors.num_actors: auto`, CPUs the autoscaler added become rollout actors.

        Checked every GROWTH_CHECK_S while no actor is starting; the surplus must be seen
        twice in a row, because the cluster's resource view lags placements by a moment."""
        if self.cfg.actors.num_actors != "auto" or self._awaiting or time.time() < self._next_growth_check:
            return
        self._next_growth_check = time.time() + GROWTH_CHECK_S
        n = new_rollout_actors(self.cfg, ray.available_resources(), len(self.actors))
        self._surplus_seen = self._surplus_seen + 1 if n else 0
        if self._surplus_seen >= 2:
            log.warning("the cluster grew: %d more rollout actor(s) (%d in all)", n, len(self.actors) + n)
            self._add_rollout_actors(n)
            self._surplus_seen = 0

    def _new_annotator(self, cfg_data: dict):
        a = self.cfg.annotator
        if a.backend == "vllm":
            # all tensor-parallel ranks on one node (STRICT_PACK), vLLM's workers inside
            pinned = role_options(self.cfg, "annotator")
            spec = annotator_placement_group(a.tensor_parallel_size)
            spec["bundles"][0].update(pinned.get("resources", {}))  # the actor sits in bundle 0
            pg = ray.util.placement_group(**spec)
            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
            gpus = 1 if a.tensor_parallel_size == 1 else 0
            return AnnotatorActor.options(num_cpus=1, num_gpus=gpus, scheduling_strategy=strategy,
                                          **pinned).remote(cfg_data)
        return AnnotatorActor.options(num_cpus=annotator_cpus(self.cfg),
                                      **role_options(self.cfg, "annotator")).remote(cfg_data)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> dict:
        learner_state = driver_state = None
        if self.resume:
            learner_state, driver_state = load_checkpoint(self.run_dir, self.cfg)
        self.store = PreferenceStore(self.store_path)  # a damaged store or bad reward models: refused before Ray
        reward_models = self._starting_reward_models(driver_state)
        self._start_ray()
        self._place_actors(learner_state)
        names = [s.name for s in self.cfg.skills]
        self.sampler = PairSampler(names, self.store.has_pair, seed=self.cfg.seed,
                                   stratum_alpha=self.cfg.annotator.pair_stratum_alpha,
                                   per_input_cap=self.cfg.annotator.captions_per_reward_input)
        if self.cfg.annotator.seed_moments:
            from mmotif.annotators.examples import seed_captions

            self.sampler.add_captions(seed_captions())
        self.counters.tie_shares = self.store.tie_shares()
        self._warned_ties: set[str] = set()
        self._annotate_started: dict = {}
        self._retrain_checked_at = 0.0
        self._scored: dict[str, set[str]] = {name: set() for name in names}
        self.metrics = MetricsSink(self.run_dir, wandb=wandb_logger(self.cfg))
        self._reward_update = None  # ref of the models the learner uses (refills a restarted trainer)
        self._trainer_back = None  # the restarting reward trainer's `ready` ping
        if driver_state:
            self._restore(driver_state)
        if reward_models is not None:
            version = self._hand_to_learner(reward_models)
            if not driver_state:
                self.counters.reward_versions.append(version)
        if self.reward_trainer is not None:
            self._refill_reward_trainer()
        self.progress = Progress(names)
        self._throughput = WindowedRate(start_total=self.counters.steps_at_start)
        self._start_competence()
        # Ctrl-C stops the run cleanly; Python lets only the main thread set signal handlers,
        # so a run started from another thread (a notebook, a test) goes without one
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._request_stop) if in_main else None
        try:
            self._loop()
            status = (f"stopped by {self._stopped_by}" if self._stop_requested else
                      "stopped: no rollout actor left (actors.max_replacements spent)" if not self.actors else "finished")
        except BaseException:
            self.metrics.close()
            raise
        finally:
            self.progress.close()
            if in_main:
                signal.signal(signal.SIGINT, previous)
            self._checkpoint()
            self.store.close()
            self._release_actors()
        summary = self._summary(status)
        try:
            self._poll_random_baseline(wait_s=0.0 if self._stop_requested else BASELINE_WAIT_S)
            if self.cfg.evaluation.tasks and not self._stop_requested:
                summary["evaluation"] = self._evaluate()
        finally:
            self.metrics.close()
        summary["report"] = str(write_report(self.run_dir, summary))
        self._sync_storage(wait=True)
        if self.storage:
            summary["storage_failures"] = self.counters.storage_failures
        return summary

    def _release_actors(self) -> None:
        """Free the cores and memory (the LLM) before evaluation; the learner stays for
        inspection until Ray shuts down."""
        for actor in [*self.actors, *self.annotators, *([self.reward_trainer] if self.reward_trainer else [])]:
            ray.kill(actor)

    def _evaluate(self) -> dict:
        """The trained network, frozen, under each task's policy over skills: the run's
        generated one (<run>/plans/<task>.py, from `mmotif plan`) when it has one, else the
        task's shipped reference policy (named so in the results); the episodes split over
        `evaluation.seeds` seeds in parallel Ray actors on the CPUs left free."""
        from mmotif.evaluation.evaluate import PolicySource, generated_policy, render_first_replay
        from mmotif.runtime.evaluation import evaluate_on_ray

        cfg, net, _ = load_network(self.run_dir)
        e, out = self.cfg.evaluation, {}
        policies = {}
        for task in e.tasks:
            path = generated_policy(self.run_dir, task)
            policies[task] = PolicySource(path.read_text(), str(path)) if path else PolicySource(None, f"reference:{task}")
        seeds = [self.cfg.seed + k for k in range(e.seeds)]
        free_cpus = max(1, int(ray.available_resources().get("CPU", 1)))
        results = evaluate_on_ray(cfg, net, policies, e.episodes, seeds, actors=free_cpus, max_steps=e.max_steps,
                                  record=e.replays, out_dir=self.run_dir / "eval")
        for task, res in results.items():
            folder = self.run_dir / "eval" / task
            if e.replays:
                render_first_replay(res, folder)
            res.write(folder)
            summary = res.summary()
            out[task] = {"proxy": summary["proxy"]["mean"], "exact": summary["exact"]["mean"],
                         "paper": summary["paper"]["mean"], "episodes": summary["episodes"],
                         "policy": policies[task].name, "interval95": summary["interval95"],
                         "files": dict(res.files)}
            self.metrics.record(self.counters.env_steps, {
                f"task_success/{task}:{check}": summary[check]["mean"] for check in ("proxy", "exact")})
        return out

    def _loop(self) -> None:
        cfg = self.cfg
        weights = self.learner.weights.remote()
        pending_train: list = []
        annotate_calls: dict = {}
        retrain_call = None
        last_ckpt = self.counters.env_steps
        deadline = time.time() + cfg.time_limit_s if cfg.time_limit_s else None
        while not self._stop_requested:
            if self.counters.env_steps >= cfg.learner.total_env_steps or (deadline and time.time() > deadline):
                break
            if not self.actors:  # every replacement spent (see _replace_rollout_actor)
                break
            for actor in self._answering(self.actors):  # an actor runs its calls in order
                if actor in self._died:  # a fresh seed: no replay of the dead one's games
                    self._died.discard(actor)
                    actor.reseed.remote(int(self.rng.integers(2**31)))
                for _ in range(cfg.actors.rollouts_in_flight):
                    self._start_collect(actor, weights)
            self._grow_with_the_cluster()
            ready = self._wait_for_rollout_or_ping()
            self._kill_stalled()
            for ref in ready:
                if ref not in self._pending:  # dropped with its dead actor's other rollouts
                    continue
                actor, side_log = self._pending.pop(ref)
                if not self._rollout_ok(side_log, actor):
                    continue
                self._last_rollout_at[actor] = time.time()
                pending_train.append(self.learner.add.remote(ref))
                self._start_collect(actor, weights)  # queued behind the one it is running
                self._record_rollout_side(ray.get(side_log))
            # learner results (bounded queue: at most 2 steps in flight)
            while pending_train:
                done, _ = ray.wait(pending_train[:1], timeout=0 if len(pending_train) <= 2 else None)
                if not done:
                    break
                stats = self._learner_result(pending_train.pop(0))
                if stats is not None:
                    weights = self.learner.weights.remote()
            if self.with_annotation:
                self._pump_annotation(annotate_calls)
                retrain_call = self._pump_reward_training(retrain_call)
            if self.counters.env_steps - last_ckpt >= cfg.checkpoint_every_steps:
                self._checkpoint()
                last_ckpt = self.counters.env_steps
            self.progress.maybe_print(self.counters, self._last_stats)
            self.metrics.refresh()

    _last_stats: dict = {}

    def _wait_for_rollout_or_ping(self, timeout: float = 1.0) -> list:
        """Block until a rollout finishes or an actor answers its `ready` ping (at most
        `timeout`); returns the finished rollouts' refs. Waiting on rollouts alone spun the
        loop while every actor was still starting (nothing pending: `ray.wait([])` returns at
        once), taking a core from the actors' own start-up."""
        waitable = [*self._pending, *self._awaiting.values()]
        if not waitable:
            time.sleep(0.05)
            return []
        ready, _ = ray.wait(waitable, num_returns=1, timeout=timeout)
        return [ref for ref in ready if ref in self._pending]

    def _start_collect(self, actor, weights) -> None:
        """Queue weights then a rollout on `actor`; the weights apply before that rollout."""
        actor.set_weights.remote(weights)
        trajectory, side_log = actor.collect.remote()
        if not any(a is actor for a, _ in self._pending.values()):
            self._last_rollout_at[actor] = time.time()  # idle until now: the clock starts here
        self._pending[trajectory] = (actor, side_log)

    def _kill_stalled(self) -> None:
        """An actor that finished no rollout for `rollout_timeout_s` while it had work has a
        hung env: kill it so Ray restarts it (its pending rollouts then fail and are handled
        like any dead actor). The clock is per actor: queued rollouts wait their turn."""
        now, limit = time.time(), self.cfg.actors.rollout_timeout_s
        busy = {a for a, _ in self._pending.values()}
        for actor in busy:
            since = self._last_rollout_at.get(actor, now)
            if now - since > limit:
                log.warning("rollout stalled for %.0f s; restarting its actor", now - since)
                ray.kill(actor, no_restart=False)
                self._last_rollout_at[actor] = float("inf")  # kill once

    def _rollout_ok(self, side_log, actor) -> bool:
        """False when the rollout failed because its actor died (Ray restarts it; it gets
        work again once it answers, see `_answering`). Asks the rollout's small side log,
        which fails with it: the trajectory itself goes to the learner by ref and never
        travels to the driver's node."""
        try:
            ray.get(side_log)
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
            self.counters.actor_restarts += 1
            self._await_restart(actor, "rollout", self.counters.actor_restarts, err)
            self._died.add(actor)
            self._drop_rollouts_of(actor)  # its other queued rollouts died with it: one death, not several
            return False
        except ray.exceptions.RayError as err:  # the rollout raised (an env that cannot reset, ...)
            self._replace_rollout_actor(actor, f"raised {_cause_line(err)}")
            return False

    def _drop_rollouts_of(self, actor) -> None:
        for other in [r for r, (a, _) in self._pending.items() if a is actor]:
            del self._pending[other]

    def _replace_rollout_actor(self, actor, why: str) -> None:
        """A rollout actor whose rollout raised, or that Ray cannot bring back, makes way for a
        fresh one in its place (new process, new NLE games) while `actors.max_replacements`
        lasts; after that its place is dropped and the run goes on with the other actors."""
        self._drop_rollouts_of(actor)
        for per_actor in (self._awaiting, self._last_rollout_at, self._ping_failures):
            per_actor.pop(actor, None)
        self._died.discard(actor)
        ray.kill(actor, no_restart=True)
        slot, budget = self.actors.index(actor), self.cfg.actors.max_replacements
        if self.counters.actor_replacements >= budget:
            self.actors.pop(slot)
            log.error("rollout actor %d %s; the replacement budget (actors.max_replacements: %d) is spent, "
                      "%d rollout actor(s) left", slot, why, budget, len(self.actors))
            return
        self.counters.actor_replacements += 1
        log.warning("rollout actor %d %s; replaced by a fresh actor (%d of %d)", slot, why,
                    self.counters.actor_replacements, budget)
        self.actors[slot] = self._new_rollout_actor(slot)
        self._died.add(self.actors[slot])  # reseeded when it answers, like a restarted actor
        self.metrics.record(self.counters.env_steps,
                            {"actor_replacements_total/rollout": self.counters.actor_replacements})

    def _await_restart(self, actor, role: str, restarts: int, err: Exception) -> None:
        """A dead actor (Ray restarts it) gets work again once it answers `ready`."""
        log.warning("%s actor died (%s); Ray restarts it", role, type(err).__name__)
        self._awaiting[actor] = actor.ready.remote()
        self.metrics.record(self.counters.env_steps, {f"actor_restarts_total/{role}": restarts})

    def _answering(self, among: list) -> list:
        """Actors of `among` that have just answered their `ready` ping (new or restarted).
        Until then they get no work: a call to a restarting actor fails, and each failure
        would look like a new death; a rollout waiting for placement would look stalled."""
        back = []
        for actor in [a for a in among if a in self._awaiting]:
            ping = self._awaiting[actor]
            if not ray.wait([ping], timeout=0)[0]:
                continue
            try:
                ray.get(ping)
                del self._awaiting[actor]
                self._ping_failures.pop(actor, None)
                back.append(actor)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
                failures = self._ping_failures[actor] = self._ping_failures.get(actor, 0) + 1
                if failures >= MAX_PING_FAILURES and actor in self.actors:
                    self._replace_rollout_actor(actor, f"did not come back ({_cause_line(err)})")
                else:
                    self._awaiting[actor] = actor.ready.remote()
        return back

    def _learner_result(self, ref) -> dict | None:
        try:
            stats = ray.get(ref)
        except ray.exceptions.ObjectLostError as err:  # the trajectory's node died before the learner had it
            self.counters.batches_lost += 1
            log.warning("a trajectory was lost with its node (%d so far): %s", self.counters.batches_lost,
                        _cause_line(err))
            self.metrics.record(self.counters.env_steps, {"batches_lost_total": self.counters.batches_lost})
            return None
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if hasattr(err, "cause") else err
            if isinstance(cause, FloatingPointError):
                raise TrainingStopped(f"non-finite value in learning: {cause}. The learner's "
                                      f"last good state was checkpointed; lower learner.lr or "
                                      f"check the reward models.") from None
            raise
        if stats is None:
            return None
        self.counters.env_steps = int(stats["env_steps"])
        self.counters.batches_dropped_for_lag = int(stats["batches_dropped_for_lag"])
        values = {k: v for k, v in stats.items() if "/" in k}
        for term in ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm"):
            values[f"learner_loss/{term}"] = stats[term]
        rate = self._throughput.update(stats["env_steps"])  # over the last RATE_WINDOW_S
        values.update(
            env_steps_total=stats["env_steps"], env_steps_per_second=rate,
            policy_version=stats["policy_version"], policy_lag=stats["policy_lag"],
            batches_dropped_for_lag_total=stats["batches_dropped_for_lag"],
            reward_model_version=stats["reward_model_version"],
        )
        self.metrics.record(self.counters.env_steps, values)
        self._last_stats = {**stats, "env_steps_per_second": values["env_steps_per_second"]}
        return stats

    def _record_rollout_side(self, side_log) -> None:
        """A rollout's finished episodes and sampled captions. The episodes' competence
        counts (mmotif.skills.competence) become events per 1,000 steps of the acting skill:
        `competence/<skill>:<event>` over this process's run, `competence_recent/...` over
        the latest COMPETENCE_WINDOW_STEPS env steps of finished episodes."""
        episodes, captions = side_log.episodes, side_log.captions
        self._record_rebuilds(side_log.rebuilds)
        self.sampler.add_captions(captions)
        append_captions(self.run_dir / "captions.jsonl", captions)
        if episodes:
            self.counters.episodes += len(episodes)
            for episode in episodes:
                self._competence.add_episode(episode)
                self._competence_recent.add_episode(episode)
            self.metrics.record(self.counters.env_steps, {
                "episode_length": float(np.mean([e.episode_steps for e in episodes])),
                "episode_score": float(np.mean([e.score for e in episodes])),
                "skill_switches": float(np.mean([e.skill_switches for e in episodes])),
                "episodes_total": self.counters.episodes,
                **metric_values(self._competence.rates(), "competence"),
                **metric_values(self._competence_recent.rates(), "competence_recent"),
            })
        self._poll_random_baseline()

    def _record_rebuilds(self, records: list[EnvRebuild]) -> None:
        """Resets that never reached the move loop (mmotif.skills.env): each logged with its
        screen and prompt state and kept in env_rebuilds.jsonl; rebuilt games counted."""
        if not records:
            return
        with open(self.run_dir / "env_rebuilds.jsonl", "a") as f:
            for r in records:
                f.write(json.dumps({"env_steps": self.counters.env_steps, "time": time.time(), **asdict(r)}) + "\n")
        for r in records:
            log.warning("rollout actor %d env %d: %s (misc %s, program_state %s)%s; screen: %s", r.actor,
                        r.env, r.error, list(r.misc), list(r.program_state),
                        "; rebuilt with a fresh NLE game" if r.rebuilt else "", " | ".join(r.screen)[:400])
        self.counters.env_rebuilds += sum(r.rebuilt for r in records)
        self.metrics.record(self.counters.env_steps, {"env_rebuilds_total": self.counters.env_rebuilds})

    # -- competence yardstick ---------------------------------------------------------------
    _baseline_ref = None  # the random baseline's Ray task while it runs

    def _start_competence(self) -> None:
        """Competence tallies, and the random-action baseline of this config: from the cache
        at once, else measured in a 0-CPU Ray task beside the training (a few seconds) and
        recorded when it arrives (`_poll_random_baseline`); the run never waits for it
        except, briefly, before the report."""
        from mmotif.runtime.shells import remote_random_baseline
        from mmotif.skills.baseline import load_cached

        self._competence, self._competence_recent = CompetenceTally(), WindowTally(COMPETENCE_WINDOW_STEPS)
        self._baseline_ref = None
        try:
            found = load_cached(self.cfg)
            if found is not None:
                self._publish_random_baseline({**found, "cached": True})
            else:
                self._baseline_ref = remote_random_baseline(self.cfg)
        except Exception as err:  # the yardstick never stops a run
            log.warning("no random competence baseline: %s", err)

    def _poll_random_baseline(self, wait_s: float = 0.0) -> None:
        ref = self._baseline_ref
        if ref is None:
            return
        if not ray.wait([ref], timeout=wait_s)[0]:
            if wait_s > 0:
                log.warning("the random competence baseline took over %.0f s; the report goes without it", wait_s)
                ray.cancel(ref, force=True)
                self._baseline_ref = None
            return
        self._baseline_ref = None
        try:
            from mmotif.skills.baseline import save_cached

            result = ray.get(ref)
            save_cached(self.cfg, result)
        except Exception as err:  # the yardstick never stops a run
            log.warning("no random competence baseline: %s", str(err).strip().splitlines()[-1][:300])
            return
        self._publish_random_baseline({**result, "cached": False})

    def _publish_random_baseline(self, result: dict) -> None:
        """`competence_random/<skill>:<event>` for the skills the schedule activated in the
        random games, `competence_random_any/...` over all random steps; and the JSON."""
        (self.run_dir / "competence_random.json").write_text(json.dumps(result, indent=1, sort_keys=True))
        self.metrics.record(self.counters.env_steps, {
            **metric_values(result.get("rates", {}), "competence_random"),
            **metric_values(result.get("rates_any_skill", {}), "competence_random_any"),
        })

    # -- annotation and reward models -----------------------------------------------------
    def _pump_annotation(self, calls: dict) -> None:
        for ref in [r for r in calls if ray.wait([r], timeout=0)[0]]:
            annotator, pairs = calls.pop(ref)
            self.sampler.done(pairs)
            try:
                prefs, stats = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
                self.counters.annotator_restarts += 1
                self._await_restart(annotator, "annotator", self.counters.annotator_restarts, err)
                continue
            except ray.exceptions.RayError as err:  # the LLM failed: count it, go on
                log.warning("annotator call failed: %s", str(err).strip().splitlines()[-1][:300])
                self.counters.annotation_failures += 1
                self.metrics.record(self.counters.env_steps,
                                    {"annotation_failures_total": self.counters.annotation_failures})
                continue
            new = self.store.append(prefs)
            self._feed_reward_trainer()
            self.counters.labels += new
            self.counters.label_seconds += stats.get("seconds", 0.0)
            self.metrics.record(self.counters.env_steps, {
                **{f"labels_total/{s}": n for s, n in self.store.counts_by_skill().items()},
                **self._tie_share_metrics(),
                "labels_per_second": self.counters.labels / max(self.counters.label_seconds, 1e-9),
                "dedup_hit_rate": self.sampler.stats.dedup_hit_rate,
                "annotator_cache_hit_rate": stats.get("cache_hit_rate", 0.0),
                "parse_failures_total": stats.get("parse_failures", 0),
            })
        self._answering(self.annotators)
        busy = {a for a, _ in calls.values()} | set(self._awaiting)
        now = time.time()
        for annotator in self.annotators:
            # an instant annotator (rules) would otherwise keep the driver busy sampling pairs
            if annotator in busy or now - self._annotate_started.get(annotator, 0.0) < MIN_ANNOTATE_INTERVAL_S:
                continue
            self._annotate_started[annotator] = now
            skill = self._next_skill_to_label()
            a = self.cfg.annotator
            if a.mode == "pointwise":  # few new captions to score, many pairs among scored ones
                pairs = self.sampler.sample(skill, a.pairs_per_call, scored=self._scored[skill],
                                            max_new=max(2, a.batch_size))
                self._scored[skill].update(c.text for p in pairs for c in (p.first, p.second))
            else:
                pairs = self.sampler.sample(skill, a.pairs_per_call)
            if pairs:
                calls[annotator.annotate.remote(pairs)] = (annotator, pairs)

    def _tie_share_metrics(self) -> dict:
        """Tie share per skill and overall, informative (non-tie) labels; warns once per skill
        whose labels stay mostly ties (its reward model would learn nothing)."""
        shares = self.counters.tie_shares = self.store.tie_shares()
        ties, known = sum(t for t, _ in shares.values()), sum(k for _, k in shares.values())
        out = {"tie_share": ties / known if known else 0.0, "informative_labels_total": known - ties}
        for skill, (t, k) in shares.items():
            out[f"tie_share/{skill}"] = t / k if k else 0.0
            if (k >= TIE_WARNING_MIN_LABELS and t / k > TIE_WARNING_SHARE
                    and skill not in self._warned_ties):
                self._warned_ties.add(skill)
                log.warning("%.0f%% of the %d labels of skill %s are ties: its reward model learns "
                            "almost nothing (check annotator.tie_rule / the model)", 100 * t / k, k, skill)
        return out

    def _next_skill_to_label(self) -> str:
        counts = self.store.counts_by_skill()
        return min((s.name for s in self.cfg.skills), key=lambda name: counts.get(name, 0))

    # The driver owns the preference store and the versions on disk; the trainer holds a copy
    # of the labels, sent as they are stored, and is refilled when it restarted empty.
    def _feed_reward_trainer(self) -> None:
        if self._trainer_back is not None:  # restarting: it is refilled once it answers
            return
        rows = list(self.store.iter_preferences(after_rowid=self._fed_cursor))
        if rows:
            self.reward_trainer.add.remote(rows)
            self._fed_rows += len(rows)
            self._fed_cursor = self.store.cursor()

    def _refill_reward_trainer(self) -> None:
        """Sends the current models and every stored label (as already trained on)."""
        if self._reward_update is not None:
            self.reward_trainer.set_current.remote(self._reward_update)
        rows = list(self.store.iter_preferences())
        for i in range(0, len(rows), REFILL_CHUNK):
            self.reward_trainer.add.remote(rows[i:i + REFILL_CHUNK], trained=self._reward_update is not None)
        self._fed_rows, self._fed_cursor = len(rows), self.store.cursor()

    def _pump_reward_training(self, call):
        if self._trainer_back is not None:  # Ray restarts it (on a lost node: once a node joins)
            if not ray.wait([self._trainer_back], timeout=0)[0]:
                return None
            self._trainer_back = None
        if call is not None:
            ref, rows_sent = call
            if not ray.wait([ref], timeout=0)[0]:
                return call
            self._retrain_checked_at = time.time()
            try:
                rows_held, update, extra = ray.get(ref)
            except ray.exceptions.RayError as err:  # restarted by Ray (no limit): refilled when it answers
                self.counters.reward_trainer_restarts += 1
                log.warning("reward trainer failed (%d so far), restarting: %s",
                            self.counters.reward_trainer_restarts, str(err).strip().splitlines()[-1][:300])
                self.metrics.record(self.counters.env_steps,
                                    {"reward_trainer_restarts_total": self.counters.reward_trainer_restarts})
                self._trainer_back = self.reward_trainer.ready.remote()  # one restart, one count
                return None
            if rows_held < rows_sent:  # a restarted trainer: empty
                log.warning("reward trainer holds %d of %d labels (restarted): refilling", rows_held, rows_sent)
                self.counters.reward_trainer_refills += 1
                self._refill_reward_trainer()
            if update is not None:
                self._publish_reward_models(update, extra)
        if time.time() - self._retrain_checked_at < RETRAIN_CHECK_INTERVAL_S:
            return None  # asking again at once only makes the trainer count its labels
        return self.reward_trainer.maybe_retrain.remote(), self._fed_rows

    def _publish_reward_models(self, update, extra: dict) -> None:
        """Writes the trainer's new models as the next version, then hands them to the learner
        by object ref."""
        from mmotif.rewards.trainer import publish_trained
        from mmotif.rewards.versions import RewardModelSet

        names = [s.name for s in self.cfg.skills]
        extra = {**extra, "started_from": self._given} if self._given else extra
        record, models = publish_trained(self.reward_root, RewardModelSet.from_update(update, skills=names),
                                         extra, names)
        self._hand_to_learner(models)
        self.counters.reward_versions.append(record.version)
        self.metrics.record(self.counters.env_steps, {
            "reward_model_version": record.version,
            **{f"reward_labels_excluded/{reason}": n for reason, n in extra.get("labels_excluded", {}).items()},
            **{f"reward_model_accuracy/{s}": acc for s, acc in zip(record.skills, record.val_accuracy)
               if acc is not None},
            **{f"reward_probe_margin/{s}": m for s, m in zip(record.skills, record.probe_margins)
               if m is not None},
        })

    # -- checkpoints -----------------------------------------------------------------------
    def _checkpoint(self) -> None:
        try:
            learner_state = ray.get(self.learner.state.remote())
        except ray.exceptions.RayError as err:
            log.error("no checkpoint written: the learner is gone (%s)", err)
            return
        bad = next((k for k, v in learner_state["net"].items() if not torch.isfinite(v).all()), None)
        if bad is not None:  # keep the last good checkpoint rather than a poisoned one
            log.error("no checkpoint written: parameter %s contains NaN/Inf", bad)
            return
        c = self.counters
        c.env_steps = int(learner_state["env_steps"])
        driver_state = {
            "env_steps": int(learner_state["env_steps"]),
            "store_cursor": self.store.cursor() if hasattr(self, "store") else 0,
            "reward_model_version": int(learner_state["reward_model_version"]),
            "labels": c.labels, "episodes": c.episodes, "reward_versions": c.reward_versions,
            "rng": self.rng.bit_generator.state, "reward_models_given": getattr(self, "_given", None),
        }
        path = save_checkpoint(self.run_dir, self.cfg, learner_state, driver_state)
        log.info("checkpoint %s", path)
        self._sync_storage(store=getattr(self, "store", None))

    def _sync_storage(self, store=None, wait: bool = False) -> None:
        """Mirror the run folder to paths.storage: prepared here, sent by a worker thread, one
        upload at a time (`wait`: finish the running one, then send now, as at the end). A failed
        upload is logged and counted, never fatal: the local folder still holds everything and
        the next sync sends it."""
        if self.storage is None:
            return
        self._collect_upload(wait=wait)
        if self._upload is not None:  # still sending: the next checkpoint sends what this one missed
            return
        try:
            plan = self.storage.prepare(store=store if store is not None and store.is_open else None)
            self._upload = self._uploader.submit(self.storage.send, plan)
        except Exception as err:  # the store snapshot, or a worker that cannot start
            self._storage_failed(err)
        if wait:
            self._collect_upload(wait=True)
            self._uploader.shutdown(wait=True)

    def _collect_upload(self, wait: bool) -> None:
        if self._upload is None or not (wait or self._upload.done()):
            return
        upload, self._upload = self._upload, None
        try:
            sent = upload.result()
            log.info("storage: %d files, %d bytes to %s in %.1f s", sent["files"], sent["bytes"],
                     self.storage.uri, sent["seconds"])
        except Exception as err:  # a network or credentials failure of the backend
            self._storage_failed(err)

    def _storage_failed(self, err: Exception) -> None:
        self.counters.storage_failures += 1
        log.error("storage: upload to %s failed (%s); the run folder keeps everything, "
                  "the next checkpoint tries again", self.storage.uri, _cause_line(err))

    def _restore(self, state: dict) -> None:
        self.counters.env_steps = self.counters.steps_at_start = int(state["env_steps"])
        self.counters.labels = int(state["labels"])
        self.counters.episodes = int(state["episodes"])
        self.counters.reward_versions = list(state["reward_versions"])
        self.rng.bit_generator.state = state["rng"]

    def _starting_reward_models(self, driver_state: dict | None):
        """The learner's first reward models (read from the driver's own disk, or from
        `reward.models`), before Ray starts; records and describes given ones."""
        from mmotif.rewards.given import GIVEN_VERSION, describe_given, given_record, starting_reward_models
        from mmotif.rewards.provenance import run_provenance

        models = starting_reward_models(self.cfg, self.reward_root, driver_state)
        self._given = (driver_state or {}).get("reward_models_given")
        if models is not None and models.version == GIVEN_VERSION:
            self._given = given_record(self.cfg.reward.models, models)
            describe_given(self._given, run_provenance(self.cfg).to_dict())
        return models

    def _hand_to_learner(self, models) -> int:
        """Sends reward models to the learner by object ref (kept to refill a restarted
        trainer: given models are its warm start); returns the version the learner uses."""
        self._reward_update = ray.put(models.to_update())
        return ray.get(self.learner.set_reward_models.remote(self._reward_update))

    # -- helpers -----------------------------------------------------------------------------
    def _request_stop(self, *_):
        if self._stop_requested:  # second Ctrl-C: leave now
            raise KeyboardInterrupt
        self._stop_requested, self._stopped_by = True, "Ctrl-C"
        print("\nmmotif: stopping after this step (checkpointing); Ctrl-C again to abort", flush=True)

    def stop(self) -> None:
        """Finish after the current step: checkpoint and report, no end-of-run evaluation. What
        Ctrl-C does, for a run in another thread (a notebook, a test)."""
        self._stop_requested, self._stopped_by = True, "Driver.stop()"

    def _summary(self, status: str) -> dict:
        c = self.counters
        elapsed = time.time() - c.started_at
        return {
            "status": status, "run_dir": str(self.run_dir), "env_steps": c.env_steps,
            "wall_s": round(elapsed, 1),
            "env_steps_per_s": round((c.env_steps - c.steps_at_start) / max(elapsed, 1e-9), 1),
            "episodes": c.episodes, "labels": c.labels, "reward_model_versions": c.reward_versions,
            **({"storage": self.storage.uri} if self.storage else {}),
        }
