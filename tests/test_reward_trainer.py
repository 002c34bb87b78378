"""The reward trainer retrains from the store when due and publishes only improvements."""

from mmotif.config import load_config
from mmotif.contract import LABEL_FIRST, Caption, CaptionPair, Preference
from mmotif.rewards.store import PreferenceStore
from mmotif.rewards.trainer import RewardTrainer
from mmotif.rewards.versions import list_versions


def descent_preferences(n, offset=0):
    down = Caption("went down", "You descend the stairs.", 1)
    messages = ["", "You kill the newt!", "It's a wall.", "The jackal bites!"]
    return [Preference(CaptionPair("descender", down, Caption(f"other {offset + i}", messages[i % 4], 0)),
                       LABEL_FIRST, "test", "rule", "v1", 0.0) for i in range(n)]


def test_retrains_when_enough_new_labels_and_publishes_a_version(tmp_path):
    cfg = load_config(preset_name="local", overrides={"reward": {"retrain_every_labels": 50, "epochs": 3, "min_steps": 20}})
    store = PreferenceStore(tmp_path / "prefs.sqlite")
    trainer = RewardTrainer(cfg, tmp_path / "prefs.sqlite", tmp_path / "rewards")
    assert trainer.maybe_retrain() is None  # empty store: nothing to do
    store.append(descent_preferences(40))
    assert not trainer.due()
    store.append(descent_preferences(40, offset=40))
    record = trainer.maybe_retrain()
    assert record is not None and record.version == 1
    descender = record.skills.index("descender")
    assert record.n_labels[descender] == 80 and record.val_accuracy[descender] is not None
    assert all(n == 0 for i, n in enumerate(record.n_labels) if i != descender)  # others stay constant
    assert list_versions(tmp_path / "rewards") == [1]
    assert trainer.maybe_retrain() is None  # nothing new
    # a restarted trainer picks up the published version
    again = RewardTrainer(cfg, tmp_path / "prefs.sqlite", tmp_path / "rewards")
    assert again.current.version == 1 and not again.due()
    store.close()
