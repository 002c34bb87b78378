"""Pair sampling from the caption stream: dedup against the store, pending pairs, and
preference for pairs the current reward model is unsure about."""

from mmotif.annotators.sampler import PairSampler
from mmotif.contract import LABEL_FIRST, Caption, Preference
from mmotif.rewards.store import PreferenceStore


def captions(n):
    return [Caption(text=f"moment {i}", message=f"message {i}", depth_change=0) for i in range(n)]


def test_duplicates_are_counted_not_pooled():
    sampler = PairSampler(["descender"], lambda *a: False, seed=0)
    sampler.add_captions(captions(5) + captions(5))
    assert len(sampler) == 5
    assert sampler.stats.captions_duplicate == 5


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
