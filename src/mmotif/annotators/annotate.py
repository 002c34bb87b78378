"""Labelling caption pairs with an LLM backend: the plain core, no Ray.

Two modes (see :mod:`mmotif.annotators.prompts`):

* ``pointwise``: one Yes/No score per unique (skill, caption text), cached in a dict the
  caller keeps between calls, so a caption that appears in many pairs costs one LLM call per
  skill. A pair's label compares the two scores by a :class:`TieRule`: by rank among the
  skill's scored captions (default; the tie share is then a set number, not an accident of
  the model's score range) or by an absolute score margin. A backend with `score_texts`
  (the rules annotator) scores caption texts directly, without a prompt.
* ``pairwise``: the paper's chain-of-thought comparison; unparseable answers get one retry
  turn, then LABEL_UNKNOWN.

The score cache is keyed by (skill, caption text) only: use one cache per backend model, skill
preference text and prompt version (:func:`score_cache_key` gives a name for that).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from mmotif.llm.base import LLMBackend
from mmotif.annotators.parsing import parse_answer
from mmotif.annotators.prompts import (
    pair_label_from_scores,
    pairwise_messages,
    pointwise_messages,
    preference_digest,
    prompt_version,
    retry_messages,
)
from mmotif.contract import LABEL_FIRST, LABEL_SECOND, LABEL_TIE, LABEL_UNKNOWN, CaptionPair, Preference

MODES = ("pointwise", "pairwise")
ScoreCache = dict[tuple[str, str], float]


@dataclass(frozen=True)
class TieRule:
    """When two pointwise scores of one skill make a tie.

    ``rank``: the scores' mid-ranks among every caption scored so far for that skill differ
    by at most `rank_gap` (a share in [0, 1)). For two random captions with distinct scores
    this ties with probability 2g - g^2 (0.19 at g = 0.1), whatever the model's score scale:
    a 0.5B model whose scores span 0.4 log-odds labels as often as one that spans 10.
    ``margin``: the scores differ by at most `margin` (log-odds), the old rule.
    Equal scores always tie; a backend with `exact_scores` (rules) ties only on equality.
    """

    kind: str = "rank"
    rank_gap: float = 0.1
    margin: float = 0.0

    def __post_init__(self):
        if self.kind not in ("rank", "margin"):
            raise ValueError(f"unknown tie rule {self.kind!r}; use 'rank' or 'margin'")
        if not 0.0 <= self.rank_gap < 1.0 or self.margin < 0:
            raise ValueError(f"tie rule needs 0 <= rank_gap < 1 and margin >= 0, got {self}")

    def labels(self, pairs_scores: Sequence[tuple[float, float]], skill_scores: Sequence[float],
               exact: bool = False) -> list[int]:
        """Labels of (first, second) score pairs of one skill; `skill_scores`: all its scores."""
        if exact or self.kind == "margin":
            margin = 0.0 if exact else self.margin
            return [pair_label_from_scores(a, b, margin) for a, b in pairs_scores]
        ranked = np.sort(np.asarray([s for s in skill_scores if math.isfinite(s)], float))

        def rank(x: float) -> float:
            lo, hi = np.searchsorted(ranked, x, "left"), np.searchsorted(ranked, x, "right")
            return (lo + hi) / (2.0 * max(len(ranked), 1))

        out = []
        for a, b in pairs_scores:
            label = pair_label_from_scores(a, b, 0.0)
            if label in (LABEL_FIRST, LABEL_SECOND) and abs(rank(a) - rank(b)) <= self.rank_gap:
                label = LABEL_TIE
            out.append(label)
        return out


@dataclass
class AnnotationStats:
    """Counters over one or more annotate_pairs calls (pass the same object to accumulate)."""

    pairs: int = 0
    labels: int = 0  # labels that are not LABEL_UNKNOWN
    unknown: int = 0
    llm_calls: int = 0  # conversations sent to the backend (a retry counts as one more)
    cache_lookups: int = 0  # pointwise: captions looked up
    cache_hits: int = 0
    parse_failures: int = 0  # pairwise: first answers that could not be parsed
    retries_failed: int = 0  # pairwise: retries that could not be parsed either
    llm_seconds: float = 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.cache_lookups if self.cache_lookups else 0.0

    @property
    def calls_per_label(self) -> float:
        return self.llm_calls / self.labels if self.labels else math.inf

    @property
    def parse_failure_rate(self) -> float:
        return self.parse_failures / self.pairs if self.pairs else 0.0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "cache_hit_rate": self.cache_hit_rate,
            "calls_per_label": self.calls_per_label,
            "parse_failure_rate": self.parse_failure_rate,
        }


def score_cache_key(backend: LLMBackend, modifier: str) -> str:
    """A name for the cache a pointwise score belongs to (model + prompt version + preference)."""
    return f"{backend.name}/{backend.model}/{prompt_version('pointwise')}/{preference_digest(modifier)}"


def _modifier(skills: Mapping[str, str], skill: str) -> str:
    try:
        return skills[skill]
    except KeyError:
        raise KeyError(f"pair for unknown skill {skill!r}; known: {', '.join(sorted(skills))}") from None


def score_captions(
    backend: LLMBackend,
    items: Sequence[tuple[str, str]],
    skills: Mapping[str, str],
    score_cache: ScoreCache | None = None,
    stats: AnnotationStats | None = None,
    chunk_size: int = 64,
    examples: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> list[float]:
    """Pointwise scores of (skill, caption text) items, through the cache. `examples`: each
    skill's solved (caption, "Yes"|"No") questions asked first (few-shot)."""
    examples = examples or {}
    cache = score_cache if score_cache is not None else {}
    stats = stats if stats is not None else AnnotationStats()
    missing: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    fresh: dict[tuple[str, str], float] = {}
    for key in items:
        stats.cache_lookups += 1
        if key in cache or key in seen:
            stats.cache_hits += 1
        else:
            seen.add(key)
            missing.append(key)
    for start in range(0, len(missing), chunk_size):
        chunk = missing[start:start + chunk_size]
        t0 = time.perf_counter()
        if hasattr(backend, "score_texts"):  # scores caption texts itself (rules)
            scores = backend.score_texts(chunk)
        else:
            scores = backend.yes_no_scores(
                [pointwise_messages(_modifier(skills, skill), text, examples.get(skill, ()))
                 for skill, text in chunk])
        stats.llm_seconds += time.perf_counter() - t0
        stats.llm_calls += len(chunk)
        if len(scores) != len(chunk):
            raise RuntimeError(f"{backend!r} returned {len(scores)} scores for {len(chunk)} prompts")
        for key, score in zip(chunk, scores):
            fresh[key] = float(score)
            if math.isfinite(score):  # a failed score (NaN) is asked again next time
                cache[key] = float(score)
    return [cache.get(key, fresh.get(key, math.nan)) for key in items]


def annotate_pairs(
    backend: LLMBackend,
    pairs: Sequence[CaptionPair],
    skills: Mapping[str, str],
    mode: str = "pointwise",
    *,
    score_cache: ScoreCache | None = None,
    tie_rule: TieRule = TieRule("margin"),
    stats: AnnotationStats | None = None,
    max_tokens: int = 1024,
    retry_max_tokens: int = 64,
    temperature: float = 0.0,
    seed: int | None = None,
    examples: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> list[Preference]:
    """One Preference per pair, in order.

    `skills` maps a skill name to its preference modifier. `score_cache` (pointwise) is read
    and updated in place; `tie_rule` (pointwise) decides which score pairs tie (ranks are
    taken among the cache's scores of the pair's skill); `examples` (pointwise) are each
    skill's solved questions asked first. `max_tokens`, `temperature` and `seed` apply to
    pairwise generation.
    """
    if mode not in MODES:
        raise ValueError(f"unknown annotation mode {mode!r}; use one of {MODES}")
    stats = stats if stats is not None else AnnotationStats()
    for pair in pairs:  # fail before any LLM call on an unknown skill
        _modifier(skills, pair.skill)
    if mode == "pointwise":
        labels = _pointwise_labels(backend, pairs, skills, score_cache, tie_rule, stats, examples)
    else:
        labels = _pairwise_labels(
            backend, pairs, skills, stats, max_tokens, retry_max_tokens, temperature, seed
        )
    version = prompt_version(mode)
    now = time.time()
    digests = {skill: preference_digest(text) for skill, text in skills.items()}
    preferences = [
        Preference(pair=pair, label=label, backend=backend.name, model=backend.model,
                   prompt_version=version, created_at=now, preference_digest=digests[pair.skill])
        for pair, label in zip(pairs, labels)
    ]
    stats.pairs += len(pairs)
    stats.unknown += sum(label == LABEL_UNKNOWN for label in labels)
    stats.labels += sum(label != LABEL_UNKNOWN for label in labels)
    return preferences


def _pointwise_labels(backend, pairs, skills, score_cache, tie_rule: TieRule, stats, examples) -> list[int]:
    cache = score_cache if score_cache is not None else {}
    items = []
    for pair in pairs:
        items.append((pair.skill, pair.first.text))
        items.append((pair.skill, pair.second.text))
    scores = score_captions(backend, items, skills, cache, stats, examples=examples)
    by_skill: dict[str, list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        by_skill[pair.skill].append(i)
    scores_of: dict[str, list[float]] = defaultdict(list)  # every cached score, by skill (ranks)
    for (skill, _), value in cache.items():
        scores_of[skill].append(value)
    labels = [LABEL_UNKNOWN] * len(pairs)
    exact = bool(getattr(backend, "exact_scores", False))
    for skill, rows in by_skill.items():
        skill_scores = scores_of[skill]
        got = tie_rule.labels([(scores[2 * i], scores[2 * i + 1]) for i in rows], skill_scores, exact)
        for i, label in zip(rows, got):
            labels[i] = label
    return labels


def _pairwise_labels(backend, pairs, skills, stats, max_tokens, retry_max_tokens, temperature, seed) -> list[int]:
    conversations = [
        pairwise_messages(skills[pair.skill], pair.first.text, pair.second.text) for pair in pairs
    ]
    t0 = time.perf_counter()
    answers = backend.chat(conversations, max_tokens=max_tokens, temperature=temperature, seed=seed)
    stats.llm_seconds += time.perf_counter() - t0
    stats.llm_calls += len(conversations)
    labels: list[int | None] = [parse_answer(answer) for answer in answers]
    failed = [i for i, label in enumerate(labels) if label is None]
    stats.parse_failures += len(failed)
    if failed:
        retries = [retry_messages(conversations[i], answers[i]) for i in failed]
        t0 = time.perf_counter()
        second = backend.chat(retries, max_tokens=retry_max_tokens, temperature=temperature, seed=seed)
        stats.llm_seconds += time.perf_counter() - t0
        stats.llm_calls += len(retries)
        for i, answer in zip(failed, second):
            labels[i] = parse_answer(answer)
            if labels[i] is None:
                stats.retries_failed += 1
                labels[i] = LABEL_UNKNOWN
    return [int(label) for label in labels]
