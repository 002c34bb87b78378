"""Pair sampling from the caption stream: dedup against the store, pending pairs, preference
for pairs the current reward model is unsure about, and event strata that bring rare moments
of real games into the labelled pairs."""

import json
from collections import Counter

import pytest
from games import random_play_captions

from mmotif.annotators.examples import Moment
from mmotif.annotators.sampler import STRATUM_ORDER, PairSampler, caption_stratum
from mmotif.contract import LABEL_FIRST, Caption, Preference
from mmotif.nethack.events import EVENTS, caption_events
from mmotif.rewards.store import PreferenceStore, pair_key


def captions(n):
    return [Caption(text=f"moment {i}", message=f"message {i}", depth_change=0) for i in range(n)]


def test_duplicates_are_counted_not_pooled():
    sampler = PairSampler(["descender"], lambda *a: False, seed=0)
    sampler.add_captions(captions(5) + captions(5))
    assert len(sampler) == 5
    assert sampler.stats.captions_duplicate == 5


def test_one_reward_input_cannot_flood_the_pool_of_real_games():
    """Real deaths share one reward input ("You die...", same level): the pool keeps a few,
    so pairs compare different inputs instead of a death with everything."""
    real = random_play_captions(3000)
    deaths = [c for c in real if "death" in caption_events(c)]
    assert len(deaths) > 8, "random play should die several times in 3,000 steps"
    flood = deaths * 1 + [Caption(f"{c.text}\n(again {i})", c.message, c.depth_change)
                          for i, c in enumerate(deaths * 20)]
    capped = PairSampler(["discoverer"], lambda *a: False, seed=0, per_input_cap=4)
    uncapped = PairSampler(["discoverer"], lambda *a: False, seed=0, per_input_cap=None)
    for sampler in (capped, uncapped):
        sampler.add_captions(real + flood)
    per_input = Counter(c.reward_key() for c in capped._pool)
    assert max(per_input.values()) <= 4
    assert capped.stats.captions_capped > len(flood) // 2

    def death_share(sampler):
        pairs = sampler.sample("discoverer", 300)
        return sum("death" in caption_events(p.first) | caption_events(p.second) for p in pairs) / len(pairs)

    assert death_share(capped) < 0.5 < death_share(uncapped)


def test_labelled_and_pending_pairs_are_skipped(tmp_path):
    store = PreferenceStore(tmp_path / "p.sqlite")
    sampler = PairSampler(["descender"], store.has_pair, seed=0)
    pool = captions(3)  # only 3 distinct pairs exist
    sampler.add_captions(pool)
    first = sampler.sample("descender", 2)
    assert len(first) == 2
    second = sampler.sample("descender", 2)  # the first two are pending
    assert len(second) == 1
    store.append([Preference(p, LABEL_FIRST, "test", "none", "v", 0.0) for p in first + second])
    sampler.done(first + second)
    assert sampler.sample("descender", 2) == []  # everything is labelled now
    assert sampler.stats.dedup_hit_rate > 0
    store.close()


def test_least_certain_pairs_are_preferred():
    sampler = PairSampler(["descender"], lambda *a: False, seed=0, candidates_per_pair=10)
    pool = captions(20)
    sampler.add_captions(pool)
    score = {c.text: float(i) for i, c in enumerate(pool)}  # gap = index distance
    pairs = sampler.sample("descender", 3, scorer=lambda skill, cs: [score[c.text] for c in cs])
    gaps = sorted(abs(score[p.first.text] - score[p.second.text]) for p in pairs)
    assert gaps[-1] <= 3  # 30 random candidates: the 3 smallest gaps are small


def test_pointwise_sampling_brings_few_new_captions():
    sampler = PairSampler(["descender"], lambda *a: False, seed=0)
    pool = captions(50)
    sampler.add_captions(pool)
    scored = {c.text for c in pool[:10]}
    pairs = sampler.sample("descender", 20, scored=scored, max_new=3)
    assert len(pairs) == 20
    texts = {c.text for p in pairs for c in (p.first, p.second)}
    assert len(texts - scored) <= 3  # at most 3 captions need an LLM score


# -- event strata on real game captions ------------------------------------------------------

COMMON_EVENTS = {"message", "nothing", "hp_loss"}


def is_rare(caption):
    return bool(caption_events(caption) - COMMON_EVENTS)


def rare_share(pairs):
    return sum(is_rare(p.first) or is_rare(p.second) for p in pairs) / len(pairs)


HAND_MADE_RARE = [
    Moment("You descend the stairs.", depth=(1, 2)),
    Moment("You climb up the stairs.", depth=(2, 1)),
    Moment("There is an altar to Chih Sung-tzu (lawful) here."),
    Moment("You die...", hp=(5, 5)),
    Moment("Asidonhopo offers 5 gold pieces for your ring.  Sell it? [ynaq] (y)"),
]


@pytest.fixture(scope="module")
def game():
    """(typical, rare) unique captions: the typical moments of real games (random actions),
    and rare ones, hand-made plus one real kill, well under 1% of the two together."""
    real = list({c.text: c for c in random_play_captions(3000, caption_rate=0.3, caption_gap=5)}.values())
    typical = [c for c in real if not is_rare(c)]
    rare = [m.caption() for m in HAND_MADE_RARE]
    rare += [c for c in real if caption_events(c) == {"kill"}][:1]  # a real rare moment too
    assert len(typical) > 600 and len(rare) == 6
    assert len(rare) / (len(typical) + len(rare)) < 0.01
    return typical, rare


def draw_pairs(sampler, count):
    pairs = []
    while len(pairs) < count:
        batch = sampler.sample("descender", 50)
        assert batch
        pairs += batch
    return pairs[:count]


def test_every_event_has_a_stratum_and_a_caption_has_its_rarest():
    assert set(EVENTS) == set(STRATUM_ORDER)
    assert caption_stratum(Moment("You die...", hp=(14, 3)).caption()) == "death"  # not hp_loss
    assert caption_stratum(Moment("You kill the newt!", gold=(0, 5)).caption()) == "kill"
    assert caption_stratum(Moment("It's a wall.").caption()) == "message"
    assert caption_stratum(Moment("").caption()) == "nothing"


def test_stratified_pairs_hold_rare_moments_far_more_often_than_uniform(game):
    typical, rare = game
    pool = typical + rare
    n, r = len(pool), len(rare)
    expected_uniform = 1 - (n - r) * (n - r - 1) / (n * (n - 1))  # P(a uniform pair holds a rare one)
    shares = {}
    for alpha in (1.0, 0.3, 0.0):
        # stratification alone: typical captions share reward inputs, so no per-input cap
        sampler = PairSampler(["descender"], lambda *a: False, seed=3, stratum_alpha=alpha, per_input_cap=None)
        sampler.add_captions(pool)
        pairs = draw_pairs(sampler, 500)
        shares[alpha] = rare_share(pairs)
        assert all(p.first.text != p.second.text for p in pairs)
    assert shares[1.0] < 3 * expected_uniform  # alpha = 1 is the plain uniform sampler
    assert shares[0.3] >= 5 * max(shares[1.0], expected_uniform)
    assert shares[0.0] >= shares[0.3] >= 10 * expected_uniform
    default = PairSampler(["descender"], lambda *a: False, seed=3, per_input_cap=None)
    default.add_captions(pool)
    pairs = draw_pairs(default, 500)
    assert rare_share(pairs) == shares[0.3]  # the default is alpha = 0.3
    seen = [c.text for p in pairs for c in (p.first, p.second)]
    assert all(seen.count(c.text) >= 5 for c in rare)  # every rare moment, compared many times
    stats = default.stats.as_dict()
    assert stats["pool_strata"] == Counter(caption_stratum(c) for c in pool)
    assert sum(stats["pairs_by_stratum"].values()) == 500
    assert {"descent", "ascent", "altar", "death", "shop", "kill"} <= set(stats["pairs_by_stratum"])
    json.dumps(stats)


def test_stratified_sampling_still_dedups_and_skips_labelled_pairs(game, tmp_path):
    typical, rare = game
    sampler = PairSampler(["descender"], lambda *a: False, seed=0, per_input_cap=None)
    sampler.add_captions(typical + rare)
    sampler.add_captions(rare + typical[:10])
    assert len(sampler) == len(typical) + len(rare)
    assert sampler.stats.captions_duplicate == len(rare) + 10
    # a lone rare caption among three typical ones: 6 distinct pairs, all found, none twice
    store = PreferenceStore(tmp_path / "p.sqlite")
    sampler = PairSampler(["descender"], store.has_pair, seed=0, stratum_alpha=0.0)
    sampler.add_captions(typical[:3] + rare[:1])
    first = sampler.sample("descender", 4)
    second = sampler.sample("descender", 4)  # the first four are pending
    keys = [pair_key(p.skill, p.first.text, p.second.text) for p in first + second]
    assert len(first) == 4 and len(second) == 2 and len(set(keys)) == 6
    store.append([Preference(p, LABEL_FIRST, "test", "none", "v", 0.0) for p in first])
    sampler.done(first + second)
    third = sampler.sample("descender", 4)  # only the two unlabelled ones come back
    assert {pair_key(p.skill, p.first.text, p.second.text) for p in third} == set(keys[4:])
    store.append([Preference(p, LABEL_FIRST, "test", "none", "v", 0.0) for p in third])
    sampler.done(third)
    assert sampler.sample("descender", 4) == []
    store.close()


def test_pointwise_contract_holds_and_rare_moments_are_scored_first(game):
    typical, rare = game
    sampler = PairSampler(["descender"], lambda *a: False, seed=1, stratum_alpha=0.0)
    sampler.add_captions(typical + rare)
    scored: set[str] = set()
    rare_texts = {c.text for c in rare}
    for call in range(10):  # as the driver does: what a call brings in is scored afterwards
        pairs = sampler.sample("descender", 64, scored=scored, max_new=4)
        assert pairs
        texts = {c.text for p in pairs for c in (p.first, p.second)}
        assert len(texts - scored) <= 4
        if scored:  # once anything is scored, a pair holds at most one unscored caption
            assert all(p.first.text in scored or p.second.text in scored for p in pairs)
        sampler.done(pairs)
        scored |= texts
    assert rare_texts <= scored  # 40 new captions of ~850: all six rare ones among them
    assert len(scored) <= 40


def test_eviction_keeps_the_rare_strata(game):
    typical, rare = game
    sampler = PairSampler(["descender"], lambda *a: False, pool_size=200, seed=0, per_input_cap=None)
    sampler.add_captions(rare)
    for i in range(0, len(typical), 4):  # a few captions per rollout, as from the actors
        sampler.add_captions(typical[i:i + 4])
    assert len(sampler) == 200
    pool_texts = {c.text for c in sampler._pool}
    assert {c.text for c in rare} <= pool_texts
    strata = sampler.stats.pool_strata
    assert sum(strata.values()) == 200 and strata == sampler.strata()
    common = [strata[s] for s in ("message", "hp_loss", "nothing")]
    assert max(common) - min(common) <= 1  # the largest stratum gives way each time
    assert len(sampler.sample("descender", 10)) == 10  # the index is consistent after evictions
