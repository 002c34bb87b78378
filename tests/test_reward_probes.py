"""Reward-model probes on models trained from real labels of real game captions."""

from __future__ import annotations

import pytest
from games import random_play_captions

from mmotif.annotators.annotate import annotate_pairs
from mmotif.annotators.examples import Moment
from mmotif.annotators.rules import RulesBackend
from mmotif.annotators.sampler import PairSampler
from mmotif.config import load_config
from mmotif.rewards.probes import probe_margins
from mmotif.rewards.store import PreferenceStore
from mmotif.rewards.trainer import RewardTrainer, publish_trained
from mmotif.rewards.versions import RewardModelSet

# Moments the agent's early games rarely produce, as they read in captions.
RARE = [
    Moment("You descend the stairs.", depth=(1, 2)), Moment("", depth=(2, 3)),
    Moment("You climb up the stairs.", depth=(3, 2)), Moment("", depth=(2, 1)),
    Moment("There is an altar to Chih Sung-tzu (lawful) here."),
    Moment("There is an amber flash as a ring hits the altar."),
    Moment("Asidonhopo offers 6 gold pieces for your ring.  Sell it? [ynaq] (y)"),
    Moment("Hello, Agent!  Welcome to Asidonhopo's general store!"),
    *[Moment(f"You kill the {monster}!") for monster in ("jackal", "grid bug", "sewer rat", "kobold")],
    Moment("You find a hidden door."), Moment("You find a hidden passage."),
    *[Moment(f"$ - {n} gold pieces.", gold=(3, 3 + n)) for n in (4, 7, 19)],
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = load_config(preset_name="local", overrides={"annotator": {"backend": "rules"},
                                                      "env": {"caption_rate": 0.05, "caption_gap": 20}})
    captions = random_play_captions(2000, seed=5) + [m.caption() for m in RARE]
    root = tmp_path_factory.mktemp("probes")
    store_path = root / "preferences.sqlite"
    backend = RulesBackend([s.name for s in cfg.skills])
    skills = {s.name: s.preference for s in cfg.skills}
    with PreferenceStore(store_path) as store:
        sampler = PairSampler(list(skills), store.has_pair, seed=0)
        sampler.add_captions(captions)
        for skill in skills:
            pairs = sampler.sample(skill, 400)
            store.append(annotate_pairs(backend, pairs, skills, score_cache={}))
        trainer = RewardTrainer(cfg)
        trainer.add(store.iter_preferences())
    record, _ = publish_trained(root / "rewards", *trainer.maybe_retrain(force=True), [s.name for s in cfg.skills])
    return cfg, record, trainer


def test_models_trained_on_informative_labels_rank_their_targets_above_a_neutral_step(trained):
    cfg, record, trainer = trained
    margins = dict(zip(record.skills, record.probe_margins))
    assert all(m is not None for m in margins.values())
    # a flat model scores exactly 0; deaths (about -2.5 std) widen the std the margin is in
    positive = [s for s, m in margins.items() if m > 0.2]
    assert len(positive) >= 4, margins
    assert margins["descender"] > 0.2 and margins["discoverer"] > 0.2, margins
    # the record's margins are the published version's own
    assert probe_margins(trainer.current, cfg.skills) == pytest.approx(margins)


def test_a_flat_model_has_zero_margin_and_a_skill_without_probes_none():
    cfg = load_config(preset_name="local")
    flat = RewardModelSet.constant([s.name for s in cfg.skills])
    assert set(probe_margins(flat, cfg.skills).values()) == {0.0}
    bare = [cfg.skills[0].model_copy(update={"probes": ()})]
    assert probe_margins(RewardModelSet.constant([bare[0].name]), bare) == {bare[0].name: None}
