"""The reward trainer retrains from the labels it was sent when due, returns only improvements,
trains only on labels of the run's provenance, never replaces a model by one trained on fewer
labels, and opens no file (the driver owns the store and the versions)."""

import dataclasses
import logging

import torch

from mmotif.annotators.annotate import annotate_pairs
from mmotif.annotators.offline import make_backend_from_config
from mmotif.config import load_config
from mmotif.contract import LABEL_FIRST, LABEL_SECOND, LABEL_UNKNOWN, Caption, CaptionPair, Preference
from mmotif.rewards.provenance import run_provenance
from mmotif.rewards.trainer import RewardTrainer, publish_trained
from mmotif.rewards.training import fit_skill_reward, is_validation, validation_accuracy
from mmotif.rewards.versions import RewardModelSet, SkillReward, list_versions

LOCAL = run_provenance(load_config(preset_name="local"))  # what the local preset's annotator records


def descent_preferences(n, offset=0, **provenance):
    """Labels preferring a descent, with the local annotator's provenance unless changed."""
    down = Caption("went down", "You descend the stairs.", 1)
    messages = ["", "You kill the newt!", "It's a wall.", "The jackal bites!"]
    fields = {"backend": "embedded", "model": LOCAL.model, "prompt_version": LOCAL.prompt_version,
              "preference_digest": LOCAL.preference_digests["descender"], **provenance}
    return [Preference(CaptionPair("descender", down, Caption(f"other {offset + i}", messages[i % 4], 0)),
                       LABEL_FIRST, created_at=0.0, **fields) for i in range(n)]


def test_retrains_when_enough_new_labels_and_returns_unpublished_models(tmp_path):
    cfg = load_config(preset_name="local", overrides={"reward": {"retrain_every_labels": 50, "epochs": 3, "min_steps": 20}})
    trainer = RewardTrainer(cfg)
    assert trainer.maybe_retrain() is None  # no labels: nothing to do
    trainer.add(descent_preferences(40))
    assert not trainer.due()
    assert trainer.add(descent_preferences(40, offset=40)) == 80
    models, extra = trainer.maybe_retrain()
    descender = models.skills.index("descender")
    assert models.entries[descender].n_labels == 80 and models.entries[descender].val_accuracy is not None
    assert all(e.is_constant for i, e in enumerate(models.entries) if i != descender)  # others stay constant
    assert extra["labels_in_store"] == 80 and extra["probe_margins"]["descender"] > 0
    assert list(tmp_path.iterdir()) == []  # the trainer writes no file: the driver publishes
    assert trainer.maybe_retrain() is None  # nothing new
    record, published = publish_trained(tmp_path / "rewards", models, extra, models.skills)
    assert record.version == 1 and published.version == 1 and list_versions(tmp_path / "rewards") == [1]
    assert record.probe_margins[descender] == extra["probe_margins"]["descender"]


def test_a_refilled_trainer_does_not_retrain_on_labels_its_models_learned(tmp_path):
    cfg = load_config(preset_name="local", overrides={"reward": {"retrain_every_labels": 50, "epochs": 3, "min_steps": 20}})
    first = RewardTrainer(cfg)
    first.add(descent_preferences(80))
    models, _ = first.maybe_retrain()
    again = RewardTrainer(cfg, models)  # a restart, refilled by the store's owner
    again.add(descent_preferences(80), trained=True)
    assert again.rows_received == 80 and not again.due()
    again.add(descent_preferences(60, offset=80))
    assert again.due()


def test_a_real_label_sent_later_replaces_an_unknown_one():
    cfg = load_config(preset_name="local")
    trainer = RewardTrainer(cfg)
    unknown = [dataclasses.replace(p, label=LABEL_UNKNOWN) for p in descent_preferences(3)]
    trainer.add(unknown + descent_preferences(3))
    held = trainer._labels["descender"]
    assert len(held) == 3 and {p.label for p in held.values()} == {LABEL_FIRST}


def fast_config(**reward):
    return load_config(preset_name="local", overrides={"reward": {"retrain_every_labels": 10, "epochs": 3,
                                                                  "min_steps": 20, **reward}})


def test_labels_of_another_provenance_are_left_out_counted_and_logged(caplog):
    mixed = (descent_preferences(40) + descent_preferences(10, 100, prompt_version="pointwise-v2")
             + descent_preferences(5, 200, model="another-model")
             + descent_preferences(3, 300, preference_digest="")  # stored before digests were
             + descent_preferences(2, 400, preference_digest="0123456789ab"))  # another preference text
    one_step = {"min_steps": 1, "epochs": 1}  # what trains is the point here, not how well
    trainer = RewardTrainer(fast_config(**one_step))
    trainer.add(mixed)
    with caplog.at_level(logging.WARNING, logger="mmotif.rewards.trainer"):
        models, extra = trainer.maybe_retrain(force=True)
    assert models.entries[models.skills.index("descender")].n_labels == 40
    assert extra["labels_excluded"] == {"prompt_version": 10, "annotator_model": 5,
                                        "no_preference_digest": 3, "preference_text": 2}
    assert extra["label_provenance"]["prompt_version"] == LOCAL.prompt_version
    lines = [r.getMessage() for r in caplog.records if "leaves out" in r.getMessage()]
    assert len(lines) == 1 and "20 of 60 labels" in lines[0], lines
    anything = RewardTrainer(fast_config(label_provenance="any", **one_step))
    anything.add(mixed)
    models, extra = anything.maybe_retrain(force=True)
    assert models.entries[models.skills.index("descender")].n_labels == 60 and extra["labels_excluded"] == {}


def test_the_labels_an_annotator_makes_match_its_runs_provenance():
    for rules in ({}, {"descender": {"descent": 1.0}}):
        cfg = load_config(preset_name="local", overrides={"annotator": {"backend": "rules", "rules": rules}})
        skills = {s.name: s.preference for s in cfg.skills}
        pair = CaptionPair("descender", Caption("a", "You descend the stairs.", 1), Caption("b", "", 0))
        prefs = annotate_pairs(make_backend_from_config(cfg), [pair], skills, cfg.annotator.mode, score_cache={})
        assert run_provenance(cfg).mismatch(prefs[0]) is None, (prefs[0], run_provenance(cfg))
    other = load_config(preset_name="local", overrides={"annotator": {"backend": "rules"}})
    assert run_provenance(other).mismatch(prefs[0]) == "annotator_model"  # default rules vs configured


def given_models(cfg, n_labels):
    """A reward-model set as `reward.models` gives it: descender trained on n_labels labels."""
    entry, _ = fit_skill_reward("descender", descent_preferences(n_labels, 5000), cfg.reward,
                                threshold_quantile=0.5)
    return RewardModelSet([entry if s.name == "descender" else SkillReward.constant(s.name)
                           for s in cfg.skills], version=0)


def test_a_given_model_survives_retrains_on_fewer_labels_and_warm_starts_the_first_on_more():
    cfg = fast_config()
    given = given_models(cfg, 100)
    d = given.skills.index("descender")
    trainer = RewardTrainer(cfg, given)
    trainer.add(descent_preferences(60))
    assert trainer.due() and trainer.maybe_retrain() is None  # 60 < 100: the given model stays
    assert trainer.current.entries[d] is given.entries[d]
    trainer.add(descent_preferences(40, offset=60))
    assert trainer.maybe_retrain() is None  # 100 labels: not more than the given model's
    tiny_steps = fast_config(lr=1e-9, min_steps=1, epochs=1)
    trainer.cfg = tiny_steps
    trainer.add(descent_preferences(10, offset=100))
    models, _ = trainer.maybe_retrain()
    retrained = models.entries[d]
    assert retrained.n_labels == 110
    for name, weight in given.entries[d].state_dict.items():  # started from the given weights
        assert torch.allclose(retrained.state_dict[name], weight, atol=1e-5), name


def test_the_gate_is_raised_to_the_neutral_step_only_when_asked():
    """descent_preferences make "" (the neutral step) the losing side: the gate must not pay it."""
    floors = {}
    for gate in (True, False):
        trainer = RewardTrainer(fast_config(gate_at_neutral=gate))
        trainer.add(descent_preferences(80))
        models, _ = trainer.maybe_retrain()
        stats = models.entries[models.skills.index("descender")].stats
        floors[gate] = stats.neutral_floor
        if gate:
            assert stats.threshold >= stats.neutral_floor
            neutral = models.score(*encode_probe(""), torch.tensor([models.skills.index("descender")]))
            assert (float(neutral) - stats.mean) / stats.std <= stats.threshold + 1e-6
    assert floors[True] is not None and floors[False] is None


def encode_probe(message):
    from mmotif.contract import encode_reward_input

    msg, diff = encode_reward_input(message, 0)
    return torch.from_numpy(msg[None]), torch.from_numpy(diff[None])


def kill_preferences(n, offset=0):
    """Same-level labels: a kill over an empty step, every tenth label the other way (noise),
    so a model can reach ~0.9 held-out accuracy and no more."""
    fields = {"backend": "embedded", "model": LOCAL.model, "prompt_version": LOCAL.prompt_version,
              "preference_digest": LOCAL.preference_digests["descender"]}
    kill = Caption("a kill", "You kill the newt!", 0)
    return [Preference(CaptionPair("descender", kill, Caption(f"quiet {offset + i}", "", 0)),
                       LABEL_SECOND if i % 10 == 0 else LABEL_FIRST, created_at=0.0, **fields)
            for i in range(n)]


def test_a_model_perfect_on_its_few_early_labels_is_replaced_when_more_labels_teach_more():
    """The regression guard compares both models on the same held-out labels: an early model
    at 1.0 on a handful of easy pairs used to lock its skill for the rest of the run (measured:
    three of five skills frozen at 114-306 labels while thousands arrived), because a better
    model at ~0.9 on the harder later labels read as a regression."""
    cfg = fast_config()
    trainer = RewardTrainer(cfg)
    trainer.add(descent_preferences(40))
    first, _ = trainer.maybe_retrain()
    early = first.entries[first.skills.index("descender")]
    assert early.val_accuracy == 1.0
    trainer.add(kill_preferences(400))
    models, _ = trainer.maybe_retrain()
    later = models.entries[models.skills.index("descender")]
    assert later is not early and later.n_labels == 440
    assert later.val_accuracy < early.val_accuracy - cfg.reward.accuracy_tolerance  # the old guard's refusal
    labels = list(trainer._labels["descender"].values())
    assert validation_accuracy(early.state_dict, labels, cfg.reward) < later.val_accuracy


def test_a_retrain_that_ranks_the_same_held_out_labels_worse_is_not_published():
    cfg = fast_config()
    trainer = RewardTrainer(cfg)
    trainer.add(descent_preferences(200))
    first, _ = trainer.maybe_retrain()
    good = first.entries[first.skills.index("descender")]
    # more labels whose training part says the opposite: the retrain learns to rank the
    # held-out part (left as it was) worse than the model it would replace
    later = [p if is_validation(p, cfg.reward.validation_fraction) else dataclasses.replace(p, label=LABEL_SECOND)
             for p in descent_preferences(600, offset=200)]
    trainer.add(later)
    assert trainer.maybe_retrain() is None
    assert trainer.current.entries[first.skills.index("descender")] is good
