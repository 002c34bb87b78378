"""The rule-based control annotator and the rank tie rule, on real rollout captions."""

from __future__ import annotations

import numpy as np
import pytest
from games import random_play_captions

from mmotif.annotators.annotate import TieRule, annotate_pairs
from mmotif.annotators.examples import Moment
from mmotif.annotators.offline import make_backend_from_config
from mmotif.annotators.rules import DEFAULT_RULES, RulesBackend
from mmotif.nethack import actions as A
from mmotif.nethack.game import NetHackGame
from mmotif.config import ConfigError, load_config
from mmotif.contract import LABEL_FIRST, LABEL_SECOND, LABEL_TIE, CaptionPair
from mmotif.nethack.events import caption_events, text_events
from mmotif.skills.specs import PAPER_SKILLS

SKILLS = {s.name: s.preference for s in PAPER_SKILLS}


@pytest.fixture(scope="module")
def rollout_captions():
    """Captions of real games (random actions under the exploration policy)."""
    captions = random_play_captions(3000)
    assert len(captions) > 200
    return captions


def test_events_read_the_caption_text():
    descent = Moment("You descend the stairs.", depth=(1, 2)).caption()
    death = Moment("You die...", hp=(14, 3)).caption()
    kill_gold = Moment("You kill the newt!", gold=(0, 5)).caption()
    assert caption_events(descent) == {"descent"}
    assert {"death", "hp_loss"} <= caption_events(death)
    assert caption_events(kill_gold) == {"kill", "gold_gain"}
    assert text_events(Moment("").caption().text) == {"nothing"}
    assert text_events(Moment("It's a wall.").caption().text) == {"message"}


def test_message_events_tell_a_murdered_pet_from_a_fight_won():
    assert caption_events(Moment("You kill the poor kitten!").caption()) == {"pet_kill"}
    assert caption_events(Moment("You destroy the lichen!").caption()) == {"kill"}
    assert caption_events(Moment("$ - 12 gold pieces.", gold=(0, 12)).caption()) == {"gold_pickup", "gold_gain"}
    assert caption_events(Moment("Welcome to experience level 2.").caption()) == {"xp_level"}
    assert caption_events(Moment("There is a staircase down here.").caption()) == {"stairs_down"}


def test_rules_read_only_what_the_reward_model_sees():
    """Every rule event is in the current message or the level change (the reward model's
    input): an HP line alone leaves a caption's score unchanged."""
    backend = RulesBackend(list(SKILLS))
    hurt = Moment("", hp=(14, 3)).caption().text
    calm = Moment("").caption().text
    for skill in SKILLS:
        assert backend.score_texts([(skill, hurt)]) == backend.score_texts([(skill, calm)])
    prayed = Moment("You begin praying to Chih Sung-tzu.").caption().text
    assert all(backend.score_texts([(s, prayed)])[0] < backend.score_texts([(s, calm)])[0] for s in SKILLS)


def test_rules_label_each_skills_target_event_above_a_neutral_moment():
    backend = RulesBackend(list(SKILLS))
    neutral = Moment("It's a wall.").caption()
    targets = {
        "descender": Moment("You descend the stairs.", depth=(1, 2)).caption(),
        "ascender": Moment("You climb up the stairs.", depth=(2, 1)).caption(),
        "discoverer": Moment("You kill the newt!").caption(),
        "worshipper": Moment("There is an altar to Chih Sung-tzu (lawful) here.").caption(),
        "merchant": Moment("Asidonhopo offers 5 gold pieces for your ring.  Sell it? [ynaq] (y)").caption(),
    }
    pairs = [CaptionPair(skill, target, neutral) for skill, target in targets.items()]
    pairs += [CaptionPair(skill, neutral, target) for skill, target in targets.items()]
    labels = [p.label for p in annotate_pairs(backend, pairs, SKILLS, "pointwise", score_cache={})]
    assert labels == [LABEL_FIRST] * 5 + [LABEL_SECOND] * 5
    tie = annotate_pairs(backend, [CaptionPair("descender", neutral, Moment("").caption())], SKILLS)
    assert tie[0].label == LABEL_TIE
    assert tie[0].backend == "rules"


def test_rules_labels_on_real_captions_are_deterministic_and_follow_the_events(rollout_captions):
    backend = RulesBackend(list(SKILLS))
    rng = np.random.default_rng(1)
    idx = rng.integers(len(rollout_captions), size=(300, 2))
    pairs = [CaptionPair("discoverer", rollout_captions[i], rollout_captions[j]) for i, j in idx]
    first = [p.label for p in annotate_pairs(backend, pairs, SKILLS, score_cache={})]
    again = [p.label for p in annotate_pairs(backend, pairs, SKILLS, score_cache={})]
    assert first == again
    rules = DEFAULT_RULES["discoverer"]
    for pair, label in zip(pairs, first):
        a, b = (sum(rules.get(e, 0) for e in caption_events(c)) for c in (pair.first, pair.second))
        assert label == (LABEL_TIE if a == b else LABEL_FIRST if a > b else LABEL_SECOND)
    assert LABEL_FIRST in first and LABEL_SECOND in first  # real games hold kills, gold, deaths


def test_rules_backend_from_config_and_its_errors():
    cfg = load_config(preset_name="local", overrides={"annotator": {"backend": "rules"}})
    assert isinstance(make_backend_from_config(cfg), RulesBackend)
    custom = [{"name": "digger", "description": "digs", "preference": "dig down"}]
    with pytest.raises(ConfigError, match="digger.*has no rules"):
        load_config(preset_name="local", overrides={"annotator": {"backend": "rules"}, "skills": custom})
    with pytest.raises(ConfigError, match="unknown events"):
        load_config(preset_name="local", overrides={
            "annotator": {"backend": "rules", "rules": {"descender": {"teleport": 1.0}}}})
    cfg = load_config(preset_name="local", overrides={
        "annotator": {"backend": "rules", "rules": {"digger": {"descent": 1.0}}}, "skills": custom})
    assert make_backend_from_config(cfg).rules == {"digger": {"descent": 1.0}}


def test_rank_rule_sets_the_tie_share_whatever_the_score_range(rollout_captions):
    """A model whose scores span a fraction of a log-odd (the 0.5B on real captions) ties
    every pair under an absolute margin of 0.5, and about 2g - g^2 of them by rank."""
    texts = list(dict.fromkeys(c.text for c in rollout_captions))
    by_text = {c.text: c for c in rollout_captions}
    rng = np.random.default_rng(2)
    narrow = {("descender", t): -1.3 + 0.45 * rng.random() for t in texts}  # -1.3 .. -0.85
    idx = rng.integers(len(texts), size=(2000, 2))
    pairs = [CaptionPair("descender", by_text[texts[i]], by_text[texts[j]]) for i, j in idx if i != j]

    class Cached:  # every score is in the cache: no model is called
        name, model = "cached", "scores"

    def tie_share(rule):
        labels = [p.label for p in annotate_pairs(Cached(), pairs, SKILLS, score_cache=dict(narrow), tie_rule=rule)]
        return labels.count(LABEL_TIE) / len(labels)

    assert tie_share(TieRule("margin", margin=0.5)) == 1.0
    share = tie_share(TieRule("rank", rank_gap=0.1))
    assert 0.14 < share < 0.25, share
    assert tie_share(TieRule("rank", rank_gap=0.0)) == 0.0


def test_seed_moments_hold_every_skills_target_event():
    from mmotif.annotators.examples import seed_captions

    seeds = seed_captions()
    assert len({c.text for c in seeds}) == len(seeds)
    backend = RulesBackend(list(SKILLS))
    for skill in SKILLS:  # each skill's rules score some seed moment above a neutral step
        scores = backend.score_texts([(skill, c.text) for c in seeds])
        assert max(scores) > 0, skill
    assert load_config(preset_name="local").annotator.seed_moments


def _messages_of_a_praying_hero(games: int, steps: int = 40) -> list[str]:
    """The messages of real games whose hero prays every other step (WAIT between)."""
    pray, wait = A.INDEX["PRAY"], A.INDEX["WAIT"]
    messages = []
    for _ in range(games):
        game = NetHackGame()
        game.reset()
        for i in range(steps):
            done = game.step(pray if i % 2 == 0 else wait)
            messages.append(game.message_bytes().decode("latin-1"))
            if done:
                break
        game.close()
    return messages


def test_the_gods_anger_in_real_games_is_an_event_every_skill_avoids():
    """A hero who prays again and again angers the god for real: NetHack answers with a
    lesson to relearn, a black glow, a ball and chain or a minion sent to kill. Each of
    these is the `god_angry` event (not only "... is displeased."), and the rules rank
    such a moment below a calm one for every skill."""
    angry = {m for m in _messages_of_a_praying_hero(10) if "god_angry" in text_events(Moment(m).caption().text)}
    beyond_displeased = {m for m in angry if "displeased" not in m}
    assert len(beyond_displeased) >= 3, sorted(angry)
    backend = RulesBackend(list(SKILLS))
    calm = backend.score_texts([(s, Moment("").caption().text) for s in SKILLS])
    for message in beyond_displeased:
        scores = backend.score_texts([(s, Moment(message).caption().text) for s in SKILLS])
        assert all(a < c for a, c in zip(scores, calm)), message
