"""The reward trainer retrains from the labels it was sent when due, returns only improvements,
and opens no file (the driver owns the store and the versions)."""

import dataclasses

from mmotif.config import load_config
from mmotif.contract import LABEL_FIRST, LABEL_UNKNOWN, Caption, CaptionPair, Preference
from mmotif.rewards.trainer import RewardTrainer, publish_trained
from mmotif.rewards.versions import list_versions


def descent_preferences(n, offset=0):
    down = Caption("went down", "You descend the stairs.", 1)
    messages = ["", "You kill the newt!", "It's a wall.", "The jackal bites!"]
    return [Preference(CaptionPair("descender", down, Caption(f"other {offset + i}", messages[i % 4], 0)),
                       LABEL_FIRST, "test", "rule", "v1", 0.0) for i in range(n)]


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
