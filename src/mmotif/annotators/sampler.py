"""Pair sampling from the live caption stream, with deduplication.

Rollout actors send a thin sample of captions. The sampler keeps a bounded pool of unique
captions, draws candidate pairs for a skill, skips pairs that are already labelled (in the
store or waiting for an annotator), and, when a scorer for the current reward model is
given, prefers the candidates it is least sure about (smallest score gap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mmotif.contract import Caption, CaptionPair
from mmotif.rewards.store import pair_key

# scorer(skill, captions) -> one current reward-model score per caption
Scorer = Callable[[str, Sequence[Caption]], Sequence[float]]


@dataclass
class SamplerStats:
    captions_seen: int = 0
    captions_duplicate: int = 0
    candidates: int = 0
    candidates_already_labelled: int = 0

    @property
    def dedup_hit_rate(self) -> float:
        """Share of captions and candidate pairs served without any new LLM work."""
        total = self.captions_seen + self.candidates
        hits = self.captions_duplicate + self.candidates_already_labelled
        return hits / total if total else 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "dedup_hit_rate": round(self.dedup_hit_rate, 4)}


class PairSampler:
    def __init__(self, skills: Sequence[str], is_labelled: Callable[[str, str, str], bool],
                 pool_size: int = 5000, seed: int = 0, candidates_per_pair: int = 4):
        self.skills = tuple(skills)
        self._is_labelled = is_labelled
        self.pool_size = pool_size
        self.candidates_per_pair = candidates_per_pair
        self._rng = np.random.default_rng(seed)
        self._pool: list[Caption] = []
        self._texts: set[str] = set()
        self._pending: set[str] = set()
        self.stats = SamplerStats()

    def __len__(self) -> int:
        return len(self._pool)

    def add_captions(self, captions: Sequence[Caption]) -> None:
        for caption in captions:
            self.stats.captions_seen += 1
            if caption.text in self._texts:
                self.stats.captions_duplicate += 1
                continue
            if len(self._pool) >= self.pool_size:  # replace a random old caption
                i = int(self._rng.integers(len(self._pool)))
                self._texts.discard(self._pool[i].text)
                self._pool[i] = caption
            else:
                self._pool.append(caption)
            self._texts.add(caption.text)

    def sample(self, skill: str, n: int, scorer: Scorer | None = None,
               scored: set[str] | None = None, max_new: int | None = None) -> list[CaptionPair]:
        """Up to n new pairs for `skill`, marked pending until `done(...)` is called.

        Pointwise annotation scores each caption once, so a pair of already scored captions
        costs no LLM call. With `scored` (texts the annotator has scored for this skill) and
        `max_new`, every pair has at most one caption outside `scored` and the pairs bring
        at most `max_new` new captions in all.
        """
        if len(self._pool) < 2 or n <= 0:
            return []
        draw = self._draw_any if scored is None or max_new is None else self._pointwise_drawer(scored, max_new)
        fresh: dict[str, CaptionPair] = {}
        tries = n * self.candidates_per_pair
        for _ in range(tries * 3):
            if len(fresh) >= tries:
                break
            a, b = draw()
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
        return [pair for _, pair in chosen]

    def _draw_any(self) -> tuple[Caption, Caption]:
        i, j = self._rng.choice(len(self._pool), size=2, replace=False)
        return self._pool[int(i)], self._pool[int(j)]

    def _pointwise_drawer(self, scored: set[str], max_new: int):
        known = [c for c in self._pool if c.text in scored]
        unknown = [c for c in self._pool if c.text not in scored]
        picks = self._rng.permutation(len(unknown))[:max_new] if unknown else []
        new = [unknown[int(i)] for i in picks]
        both = known + new

        def draw() -> tuple[Caption, Caption]:
            if len(both) < 2:
                return self._draw_any()
            i, j = self._rng.choice(len(both), size=2, replace=False)
            return both[int(i)], both[int(j)]
        return draw

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
