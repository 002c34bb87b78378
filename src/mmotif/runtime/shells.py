"""Thin Ray shells around the plain cores: they only move data.

RolloutActor   -> mmotif.actors.rollout.RolloutWorker
LearnerActor   -> mmotif.learners.learner.Learner
AnnotatorActor -> an LLM backend + mmotif.annotators.annotate.annotate_pairs
RewardTrainerActor -> mmotif.rewards.trainer.RewardTrainer
remote_random_baseline -> mmotif.skills.baseline.compute_random_baseline (a Ray task)

Configs cross the boundary as plain dicts (`RunConfig.model_dump()`), rebuilt and
re-validated on the other side.
"""

from __future__ import annotations

import time

import ray

from mmotif.config import RunConfig, build_config


def _config(data: dict) -> RunConfig:
    return build_config(data, "config sent by the driver")


@ray.remote(max_restarts=-1, max_task_retries=0)  # restarts without limit: a spot fleet would spend any budget
class RolloutActor:
    def __init__(self, config: dict, actor_id: int, seed: int):
        from mmotif.actors.rollout import RolloutWorker

        self.worker = RolloutWorker(_config(config), actor_id, seed)

    def set_weights(self, version) -> int:
        self.worker.set_weights(version)
        return self.worker.policy_version

    @ray.method(num_returns=2)
    def collect(self):
        """Two objects: the trajectory (the driver passes its ref on to the learner) and the
        rollout's side log for the driver (a RolloutSideLog)."""
        batch = self.worker.collect()
        return batch, self.worker.pop_side_log()

    # a ping sent while Ray restarts the actor waits for it (its node lost: until a node joins)
    @ray.method(max_task_retries=-1)
    def ready(self) -> bool:
        """Answers once the envs are built (after a restart too)."""
        return True

    def env_steps(self) -> int:
        return self.worker.env_steps

    def reseed(self, seed: int) -> None:
        self.worker.reseed(seed)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


@ray.remote(max_restarts=0)
class LearnerActor:
    def __init__(self, config: dict, state: dict | None = None):
        from mmotif.learners.learner import Learner

        self.learner = Learner(_config(config))
        if state is not None:
            self.learner.load_state(state)

    def add(self, batch):
        return self.learner.add(batch)

    def weights(self):
        return self.learner.weights()

    def set_reward_models(self, update) -> int:
        from mmotif.rewards.versions import RewardModelSet

        self.learner.set_reward_models(RewardModelSet.from_update(update, skills=self.learner.skills))
        return self.learner.reward_version

    def state(self) -> dict:
        return self.learner.state()

    def counters(self) -> dict:
        lr = self.learner
        return {"policy_version": lr.policy_version, "env_steps": lr.env_steps,
                "reward_model_version": lr.reward_version}


@ray.remote(max_restarts=-1, max_task_retries=0)  # restarts without limit: a spot fleet would spend any budget
class AnnotatorActor:
    """One LLM engine; labels batches of caption pairs. Scores are cached per caption."""

    def __init__(self, config: dict):
        from mmotif.annotators.annotate import AnnotationStats
        from mmotif.annotators.offline import (
            examples_from_config, generation_from_config, make_backend_from_config, tie_rule_from_config,
        )

        cfg = _config(config)
        self.cfg = cfg
        self.backend = make_backend_from_config(cfg)
        self.tie_rule = tie_rule_from_config(cfg)
        self.examples = examples_from_config(cfg)
        self.skills = {s.name: s.preference for s in cfg.skills}
        self.generation = generation_from_config(cfg)
        self.score_cache: dict = {}
        self.stats = AnnotationStats()

    @ray.method(max_task_retries=-1)  # see RolloutActor.ready
    def ready(self) -> bool:
        """Answers once the engine is loaded (after a restart too)."""
        return True

    def annotate(self, pairs):
        from mmotif.annotators.annotate import annotate_pairs

        t0 = time.perf_counter()
        prefs = annotate_pairs(self.backend, pairs, self.skills, self.cfg.annotator.mode,
                               score_cache=self.score_cache, tie_rule=self.tie_rule, examples=self.examples,
                               stats=self.stats, **self.generation)
        return prefs, {**self.stats.as_dict(), "seconds": time.perf_counter() - t0}


@ray.remote(max_restarts=-1, max_task_retries=0)
class RewardTrainerActor:
    """Holds no file: labels arrive from the store's owner (the driver), new models leave as
    RewardModelUpdate records. A restarted one starts empty and says so (`rows_received` 0): the driver refills it."""

    def __init__(self, config: dict):
        from mmotif.rewards.trainer import RewardTrainer

        self.trainer = RewardTrainer(_config(config))

    @ray.method(max_task_retries=-1)  # see RolloutActor.ready
    def ready(self) -> bool:
        """Answers once the actor is up (after a restart too: then it holds no label)."""
        return True

    def add(self, preferences: list, trained: bool = False) -> int:
        return self.trainer.add(preferences, trained=trained)

    def set_current(self, update) -> None:
        from mmotif.rewards.versions import RewardModelSet

        self.trainer.current = RewardModelSet.from_update(update, skills=self.trainer.skills)

    def maybe_retrain(self, force: bool = False):
        """(rows received, the new models (a RewardModelUpdate) or None, manifest extras or None)."""
        trained = self.trainer.maybe_retrain(force)
        if trained is None:
            return self.trainer.rows_received, None, None
        models, extra = trained
        return self.trainer.rows_received, models.to_update(), extra


@ray.remote(num_cpus=0, max_retries=0)
def _random_baseline_task(config: dict, steps: int, num_envs: int, seed: int) -> dict:
    from mmotif.skills.baseline import compute_random_baseline

    return compute_random_baseline(_config(config), steps, num_envs, seed)


def remote_random_baseline(cfg: RunConfig, steps: int | None = None, num_envs: int | None = None,
                           seed: int = 0):
    """`compute_random_baseline` in a 0-CPU Ray task; returns its ref (the caller caches the
    result on its own machine with `skills.baseline.save_cached`)."""
    from mmotif.skills.baseline import BASELINE_ENVS, BASELINE_STEPS

    return _random_baseline_task.remote(cfg.model_dump(mode="json"), steps or BASELINE_STEPS,
                                        num_envs or BASELINE_ENVS, seed)
