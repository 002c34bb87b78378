"""Reward models given with `reward.models`: the learner starts from them as version 0, and
`--resume` finds them where the config points (a one-line error names the path when they are
gone), while the run's own versions come from its rewards folder."""

from __future__ import annotations

import json
import shutil

import pytest
import ray
import torch

from mmotif.checkpoint import save_checkpoint
from mmotif.config import load_config
from mmotif.contract import DIFFSTATS_LEN, MESSAGE_LEN
from mmotif.rewards.given import GIVEN_VERSION, starting_reward_models
from mmotif.rewards.model import RewardModel
from mmotif.rewards.stats import RewardStats
from mmotif.rewards.versions import RewardModelSet, RewardVersionError, SkillReward, load_dir, publish


def model_set(cfg, seed: int, n_labels: int) -> RewardModelSet:
    """Every skill a real (untrained) reward model; `seed` tells sets apart."""
    torch.manual_seed(seed)
    stats = RewardStats(mean=0.0, std=1.0, threshold_quantile=0.5, threshold=0.0, quantiles=[0.0] * 19, n_unique=2)
    return RewardModelSet([SkillReward(s.name, RewardModel().state_dict(), stats, n_labels=n_labels)
                           for s in cfg.skills])


def scores(models: RewardModelSet) -> torch.Tensor:
    n = models.num_skills
    msg = torch.arange(n * MESSAGE_LEN).reshape(n, MESSAGE_LEN).remainder(97).to(torch.uint8)
    return models.score(msg, torch.ones(n, DIFFSTATS_LEN), torch.arange(n))


@pytest.fixture
def run(tmp_path):
    """A config given reward models published elsewhere, and its (empty) run folder."""
    given_root = tmp_path / "elsewhere"
    record = publish(given_root, model_set(load_config(preset_name="local"), seed=1, n_labels=5000))
    cfg = load_config(preset_name="local", overrides={"paths": {"run_dir": str(tmp_path / "run")},
                                                      "reward": {"models": record.path}})
    return cfg, tmp_path / "run" / "rewards", record


def test_a_new_run_starts_from_the_given_models_as_version_0(run):
    cfg, own_root, record = run
    models = starting_reward_models(cfg, own_root, None)
    assert models.version == GIVEN_VERSION and [e.n_labels for e in models.entries] == [5000] * models.num_skills
    assert torch.equal(scores(models), scores(load_dir(record.path)))


def test_resume_finds_the_given_models_where_the_config_points_and_its_own_in_the_run(run):
    cfg, own_root, record = run
    own = publish(own_root, model_set(cfg, seed=2, n_labels=6000))  # also number 1, other weights
    given = starting_reward_models(cfg, own_root, {"reward_model_version": GIVEN_VERSION})
    assert torch.equal(scores(given), scores(starting_reward_models(cfg, own_root, None)))
    mine = starting_reward_models(cfg, own_root, {"reward_model_version": own.version})
    assert mine.version == 1 and not torch.equal(scores(mine), scores(given))
    assert starting_reward_models(cfg, own_root, {"reward_model_version": -1}) is None


def test_resume_without_the_given_models_fails_in_one_line_naming_the_path(run):
    cfg, own_root, record = run
    shutil.rmtree(record.path)
    with pytest.raises(RewardVersionError) as err:
        starting_reward_models(cfg, own_root, {"reward_model_version": GIVEN_VERSION})
    assert record.path in str(err.value) and "\n" not in str(err.value), err.value
    bare = cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"models": None})})
    with pytest.raises(RewardVersionError, match="config.yaml"):
        starting_reward_models(bare, own_root, {"reward_model_version": GIVEN_VERSION})


def test_driver_resume_refuses_missing_given_models_before_starting_ray(run):
    from mmotif.runtime.driver import Driver

    cfg, own_root, record = run
    run_dir = own_root.parent
    run_dir.mkdir()
    save_checkpoint(run_dir, cfg, {"env_steps": 512},
                    {"env_steps": 512, "reward_model_version": GIVEN_VERSION, "labels": 0})
    shutil.rmtree(record.path)
    was_up = ray.is_initialized()
    with pytest.raises(RewardVersionError, match=record.path):
        Driver(cfg, resume=True).run()
    assert ray.is_initialized() == was_up


def test_the_driver_records_what_the_given_models_were_trained_on(run):
    from mmotif.runtime.driver import Driver

    cfg, own_root, record = run
    driver = Driver(cfg)
    models = driver._starting_reward_models(None)
    assert models.version == GIVEN_VERSION
    given = driver._given
    assert given["path"] == record.path and given["version"] == 1
    assert given["n_labels"] == {s.name: 5000 for s in cfg.skills}
    assert given["label_provenance"] is None  # published without one: not recorded
    resumed = Driver(cfg, resume=False)
    resumed._starting_reward_models({"reward_model_version": GIVEN_VERSION, "reward_models_given": given})
    assert resumed._given == given


@pytest.mark.slow
def test_a_run_given_models_scores_with_them_and_its_resume_goes_on_with_them(run):
    """Real Ray, real learner: the checkpoint records version 0 and the given models, and the
    resumed run's learner scores with them again (its own rewards folder has none)."""
    from mmotif.runtime.driver import Driver
    from mmotif.runtime.resume import load_checkpoint

    cfg, own_root, record = run
    cfg = load_config(preset_name="local", overrides={
        "paths": {"run_dir": str(own_root.parent)}, "reward": {"models": record.path},
        "time_limit_s": 12, "checkpoint_every_steps": 1024, "annotator": {"num_annotators": 0},
        "actors": {"num_actors": 1, "envs_per_actor": 4}, "learner": {"batch_size": 128, "rollout": 32},
        "evaluation": {"tasks": []}})
    ray.init(num_cpus=3, include_dashboard=False, logging_level="ERROR")
    try:
        Driver(cfg).run()
        _, state = load_checkpoint(own_root.parent, cfg)
        assert state["reward_model_version"] == GIVEN_VERSION and state["reward_models_given"]["path"] == record.path
        steps_before = state["env_steps"]
        Driver(cfg, resume=True).run()
    finally:
        ray.shutdown()
    rows = [json.loads(line) for line in (own_root.parent / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in rows if "reward_model_version" in r and r["step"] > steps_before]
    assert resumed and {r["reward_model_version"] for r in resumed} == {GIVEN_VERSION}
    assert not own_root.exists() or not any(own_root.iterdir())
