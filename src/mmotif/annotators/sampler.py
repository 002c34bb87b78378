"""Pair sampling from the live caption stream: event strata, deduplication, pending pairs.

Rollout actors send a thin sample of captions. The sampler keeps a bounded pool of unique
captions, draws candidate pairs for a skill, skips pairs that are already labelled (in the
store or waiting for an annotator), and, when a scorer for the current reward model is
given, prefers the candidates it is least sure about (smallest score gap).

The informative moments of a game (level changes, shops, altars, kills, gold, deaths) are
rare among captions, so pairs drawn uniformly almost never hold one and the reward models
learn nothing about them. The pool is therefore indexed by *stratum*: the rarest event of a
caption (`mmotif.nethack.events.caption_events`, ranked by `STRATUM_ORDER`), one stratum per
caption. A pair's first caption comes from a stratum drawn with weight size**alpha
(`stratum_alpha`), its second uniformly from the whole pool, so each rare moment is compared
with typical ones. A full pool evicts from its largest stratum, never from the rare ones.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from mmotif.contract import Caption, CaptionPair
from mmotif.nethack.events import EVENTS, caption_events
from mmotif.rewards.store import pair_key

# scorer(skill, captions) -> one current reward-model score per caption
Scorer = Callable[[str, Sequence[Caption]], Sequence[float]]

# Events from rarest to most common in the agent's games: a caption's stratum is the first of
# its events in this order (a death with an HP loss is a "death", a kill with gold a "kill").
# Events of the vocabulary missing here (added to events.py later) rank as rarest of all.
STRATUM_ORDER: tuple[str, ...] = (
    "ascent", "altar", "shop", "pet_kill", "prayer", "god_angry", "level_up", "xp_level", "descent",
    "hidden", "stairs_up", "stairs_down", "death", "gold_loss", "kill", "gold_gain", "gold_pickup",
    "item", "hp_loss", "message", "nothing",
)
_RANK = {e: i for i, e in enumerate(STRATUM_ORDER)}
# Strata of typical moments; every other stratum is an informative, rare one.
COMMON_STRATA = frozenset({"hp_loss", "message", "nothing"})
assert set(STRATUM_ORDER) <= set(EVENTS), "STRATUM_ORDER names an event events.py does not"


def caption_stratum(caption: Caption) -> str:
    """The stratum of a caption: its rarest event by `STRATUM_ORDER`."""
    return min(caption_events(caption), key=lambda e: _RANK.get(e, -1))


def _rarer(a: str, b: str) -> str:
    return a if _RANK.get(a, -1) <= _RANK.get(b, -1) else b


@dataclass
class SamplerStats:
    captions_seen: int = 0
    captions_duplicate: int = 0
    captions_capped: int = 0  # not pooled: their reward-model input already had its share
    candidates: int = 0
    candidates_already_labelled: int = 0
    pool_strata: dict[str, int] = field(default_factory=dict)  # captions in the pool, per stratum
    pairs_by_stratum: dict[str, int] = field(default_factory=dict)  # pairs handed out, per rarer stratum

    @property
    def dedup_hit_rate(self) -> float:
        """Share of captions and candidate pairs served without any new LLM work."""
        total = self.captions_seen + self.candidates
        hits = self.captions_duplicate + self.candidates_already_labelled
        return hits / total if total else 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "pool_strata": dict(self.pool_strata),
                "pairs_by_stratum": dict(self.pairs_by_stratum),
                "dedup_hit_rate": round(self.dedup_hit_rate, 4)}


class PairSampler:
    """Candidate caption pairs per skill, stratified by game event.

    `stratum_alpha` (alpha, in [0, 1]) tempers the stratification: a pair's first caption
    comes from a stratum drawn with probability proportional to (captions in it)**alpha, then
    uniformly within that stratum; the second is uniform over the rest of the pool; the two
    are put in random order. alpha = 0 draws the strata uniformly (a lone "ascent" caption is
    as likely a first caption as the whole "message" stratum), alpha = 1 draws every caption
    with the same probability: the plain uniform sampler. In between, rare strata are
    over-drawn by a factor that grows with the pool's imbalance. The default, 0.3, was picked on
    real game captions with 0.6% rare moments: 24% of its pairs hold a rare event (uniform: 1%,
    alpha = 0: 61%) while three pairs in four still compare typical moments, which are most of
    what the agent sees; alpha = 0 spends most labels on a handful of rare captions.

    A full pool (`pool_size` unique captions) makes room by evicting a random caption of its
    largest stratum, whatever alpha is.

    The pool holds at most `per_input_cap` captions per reward-model input (current message
    and level change, `Caption.reward_key`): the reward model sees nothing else, so a
    thousand captions of one input teach it no more than a dozen. Without the cap one input
    floods the pool: in a 300 s run whose agent died every ~100 steps, 1,082 of 1,977 captions
    were "You die...", most pairs held one, and the discoverer's model learned only that a
    death is bad (an empty step outranked a kill).
    """

    def __init__(self, skills: Sequence[str], is_labelled: Callable[[str, str, str], bool],
                 pool_size: int = 5000, seed: int = 0, candidates_per_pair: int = 4,
                 stratum_alpha: float = 0.3, per_input_cap: int | None = 16):
        if not 0.0 <= stratum_alpha <= 1.0:
            raise ValueError(f"stratum_alpha must be in [0, 1], got {stratum_alpha}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be positive, got {pool_size}")
        self.skills = tuple(skills)
        self._is_labelled = is_labelled
        self.pool_size = pool_size
        self.candidates_per_pair = candidates_per_pair
        self.stratum_alpha = float(stratum_alpha)
        if per_input_cap is not None and per_input_cap < 1:
            raise ValueError(f"per_input_cap must be positive or None, got {per_input_cap}")
        self.per_input_cap = per_input_cap
        self._per_input: Counter[str] = Counter()  # reward key -> captions of it in the pool
        self._rng = np.random.default_rng(seed)
        self._pool: list[Caption] = []  # every caption, in no particular order
        self._pool_pos: dict[str, int] = {}  # text -> index in _pool
        self._strata: dict[str, list[Caption]] = {}  # non-empty strata only
        self._stratum_pos: dict[str, int] = {}  # text -> index in its stratum's list
        self._stratum_of: dict[str, str] = {}  # text -> stratum
        self._pending: set[str] = set()
        self.stats = SamplerStats()

    def __len__(self) -> int:
        return len(self._pool)

    def strata(self) -> dict[str, int]:
        """Captions in the pool per stratum."""
        return {s: len(members) for s, members in self._strata.items()}

    # -- the pool -------------------------------------------------------------------------
    def add_captions(self, captions: Sequence[Caption]) -> None:
        for caption in captions:
            self.stats.captions_seen += 1
            if caption.text in self._pool_pos:
                self.stats.captions_duplicate += 1
                continue
            key = caption.reward_key()
            if self.per_input_cap is not None and self._per_input[key] >= self.per_input_cap:
                self.stats.captions_capped += 1
                continue
            self._per_input[key] += 1
            self._insert(caption, caption_stratum(caption))
            if len(self._pool) > self.pool_size:  # the largest stratum (new caption included) gives way
                self._evict()

    def _insert(self, caption: Caption, stratum: str) -> None:
        text = caption.text
        self._pool_pos[text] = len(self._pool)
        self._pool.append(caption)
        members = self._strata.setdefault(stratum, [])
        self._stratum_pos[text] = len(members)
        members.append(caption)
        self._stratum_of[text] = stratum
        self.stats.pool_strata[stratum] = len(members)

    def _evict(self) -> None:
        """Drops a random caption of the largest stratum (O(strata))."""
        stratum = max(self._strata, key=lambda s: len(self._strata[s]))
        members = self._strata[stratum]
        caption = members[int(self._rng.integers(len(members)))]
        text = caption.text
        _swap_remove(members, self._stratum_pos, text)
        _swap_remove(self._pool, self._pool_pos, text)
        del self._stratum_of[text]
        self._per_input[caption.reward_key()] -= 1
        if members:
            self.stats.pool_strata[stratum] = len(members)
        else:
            del self._strata[stratum]
            del self.stats.pool_strata[stratum]

    # -- drawing pairs --------------------------------------------------------------------
    def sample(self, skill: str, n: int, scorer: Scorer | None = None,
               scored: set[str] | None = None, max_new: int | None = None) -> list[CaptionPair]:
        """Up to n new pairs for `skill`, marked pending until `done(...)` is called.

        Pointwise annotation scores each caption once, so a pair of already scored captions
        costs no LLM call. With `scored` (texts the annotator has scored for this skill) and
        `max_new`, every pair has at most one caption outside `scored` and the pairs bring
        at most `max_new` new captions in all; the new captions are chosen stratified too,
        so rare moments get scored first. (While nothing in the pool is scored yet, pairs of
        two new captions are the only way to start.)
        """
        if len(self._pool) < 2 or n <= 0:
            return []
        if scored is None or max_new is None:
            draw = self._draw_any
        else:
            draw = self._pointwise_drawer(scored, max_new)
            if draw is None:
                return []
        fresh: dict[str, CaptionPair] = {}
        tries = n * self.candidates_per_pair
        budget = tries * 3
        while len(fresh) < tries and budget > 0:
            batch = draw(min(tries, budget))
            budget -= len(batch)
            for a, b in batch:
                if len(fresh) >= tries:
                    break
                key = pair_key(skill, a.text, b.text)
                self.stats.candidates += 1
                if key in fresh or key in self._pending or self._is_labelled(skill, a.text, b.text):
                    self.stats.candidates_already_labelled += 1
                    continue
                fresh[key] = CaptionPair(skill=skill, first=a, second=b)
        chosen = list(fresh.items())
        if scorer is not None and len(chosen) > n:
            chosen = self._least_certain(skill, chosen, n, scorer)
        chosen = chosen[:n]
        self._pending.update(k for k, _ in chosen)
        by_stratum = self.stats.pairs_by_stratum
        for _, p in chosen:
            s = _rarer(self._stratum_of[p.first.text], self._stratum_of[p.second.text])
            by_stratum[s] = by_stratum.get(s, 0) + 1
        return [pair for _, pair in chosen]

    def _stratum_weights(self, sizes: np.ndarray) -> np.ndarray:
        """Cumulative weights size**alpha of non-empty strata."""
        return np.cumsum(sizes.astype(float) ** self.stratum_alpha)

    def _draw_any(self, m: int) -> list[tuple[Caption, Caption]]:
        """m candidate pairs: a stratified first caption and a uniform other one."""
        groups = list(self._strata.values())
        sizes = np.fromiter((len(g) for g in groups), dtype=np.int64, count=len(groups))
        cum = self._stratum_weights(sizes)
        rng = self._rng
        which = np.minimum(np.searchsorted(cum, rng.random(m) * cum[-1], side="right"), len(groups) - 1)
        inside = rng.integers(0, sizes[which])
        others = rng.integers(0, len(self._pool) - 1, size=m)
        swaps = rng.random(m) < 0.5
        pool, pos = self._pool, self._pool_pos
        out = []
        for g, i, j, swap in zip(which.tolist(), inside.tolist(), others.tolist(), swaps.tolist()):
            a = groups[g][i]
            if j >= pos[a.text]:  # uniform over the pool without `a`
                j += 1
            b = pool[j]
            out.append((b, a) if swap else (a, b))
        return out

    def _pointwise_drawer(self, scored: set[str], max_new: int):
        """A drawer over the scored captions plus at most `max_new` stratified new ones, or
        None when fewer than two captions are allowed. One pass over the pool."""
        known: list[Caption] = []
        known_bounds, unknown = [], []
        for members in self._strata.values():
            start = len(known)
            known += [c for c in members if c.text in scored]
            known_bounds.append((start, len(known)))
            unknown.append([c for c in members if c.text not in scored])
        k = len(known)
        picks = self._pick_stratified(unknown, max_new)
        both = known + [c for _, c in picks]
        if len(both) < 2:
            return None
        members_of = [list(range(a, b)) for a, b in known_bounds]
        for t, (s, _) in enumerate(picks):
            members_of[s].append(k + t)
        groups = [g for g in members_of if g]
        sizes = np.fromiter((len(g) for g in groups), dtype=np.int64, count=len(groups))
        cum = self._stratum_weights(sizes)
        rng, n_both = self._rng, len(both)

        def draw(m: int) -> list[tuple[Caption, Caption]]:
            which = np.minimum(np.searchsorted(cum, rng.random(m) * cum[-1], side="right"), len(groups) - 1)
            inside = rng.integers(0, sizes[which])
            u = rng.random(m)
            swaps = rng.random(m) < 0.5
            out = []
            for g, i, x, swap in zip(which.tolist(), inside.tolist(), u.tolist(), swaps.tolist()):
                fi = groups[g][i]
                if fi >= k > 0:  # a new caption: its partner is a scored one
                    j = min(int(x * k), k - 1)
                else:  # uniform over `both` without the first
                    j = min(int(x * (n_both - 1)), n_both - 2)
                    j += j >= fi
                a, b = both[fi], both[j]
                out.append((b, a) if swap else (a, b))
            return out
        return draw

    def _pick_stratified(self, unknown: list[list[Caption]], count: int) -> list[tuple[int, Caption]]:
        """Up to `count` distinct captions of `unknown` (a list of captions per stratum) with
        their stratum index: strata drawn one pick after the other with weight (captions
        left)**alpha, like first captions, then captions uniformly within each stratum."""
        left = np.array([len(u) for u in unknown], dtype=float)
        count = min(max(count, 0), int(left.sum()))
        taken = np.zeros(len(unknown), dtype=np.int64)
        for _ in range(count):
            w = np.where(left > 0, left ** self.stratum_alpha, 0.0)
            s = int(self._rng.choice(len(w), p=w / w.sum()))
            left[s] -= 1
            taken[s] += 1
        picks = []
        for s in np.flatnonzero(taken).tolist():
            members = unknown[s]
            for i in self._rng.choice(len(members), size=int(taken[s]), replace=False).tolist():
                picks.append((s, members[i]))
        return picks

    def done(self, pairs: Sequence[CaptionPair]) -> None:
        """The annotator has answered (or given up on) these pairs."""
        for p in pairs:
            self._pending.discard(pair_key(p.skill, p.first.text, p.second.text))

    @staticmethod
    def _least_certain(skill, chosen, n, scorer: Scorer):
        firsts = scorer(skill, [p.first for _, p in chosen])
        seconds = scorer(skill, [p.second for _, p in chosen])
        gaps = np.abs(np.asarray(firsts, float) - np.asarray(seconds, float))
        order = np.argsort(gaps, kind="stable")[:n]
        return [chosen[int(i)] for i in order]


def _swap_remove(items: list[Caption], pos: dict[str, int], text: str) -> None:
    """Removes the caption `text` from `items` in O(1), keeping `pos` (text -> index) right."""
    i = pos.pop(text)
    last = items.pop()
    if i < len(items):
        items[i] = last
        pos[last.text] = i
