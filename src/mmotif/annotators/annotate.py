"""Labelling caption pairs with an LLM backend: the plain core, no Ray.

Two modes (see :mod:`mmotif.annotators.prompts`):

* ``pointwise``: one Yes/No score per unique (skill, caption text), cached in a dict the
  caller keeps between calls, so a caption that appears in many pairs costs one LLM call per
  skill. A pair's label compares the two scores (a tie within `margin`).
* ``pairwise``: the paper's chain-of-thought comparison; unparseable answers get one retry
  turn, then LABEL_UNKNOWN.

The score cache is keyed by (skill, caption text) only: use one cache per backend model, skill
preference text and prompt version (:func:`score_cache_key` gives a name for that).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from mmotif.annotators.backends.base import LLMBackend
from mmotif.annotators.parsing import parse_answer
from mmotif.annotators.prompts import (
    pair_label_from_scores,
    pairwise_messages,
    pointwise_messages,
    prompt_version,
    retry_messages,
)
from mmotif.contract import LABEL_UNKNOWN, CaptionPair, Preference

MODES = ("pointwise", "pairwise")
ScoreCache = dict[tuple[str, str], float]


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
    digest = hashlib.sha256(modifier.encode()).hexdigest()[:12]
    return f"{backend.name}/{backend.model}/{prompt_version('pointwise')}/{digest}"


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
) -> list[float]:
    """Pointwise scores of (skill, caption text) items, through the cache."""
    cache = score_cache if score_cache is not None else {}
    stats = stats if stats is not None else AnnotationStats()
    missing: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for key in items:
        stats.cache_lookups += 1
        if key in cache or key in seen:
            stats.cache_hits += 1
        else:
            seen.add(key)
            missing.append(key)
    for start in range(0, len(missing), chunk_size):
        chunk = missing[start:start + chunk_size]
        prompts = [pointwise_messages(_modifier(skills, skill), text) for skill, text in chunk]
        t0 = time.perf_counter()
        scores = backend.yes_no_scores(prompts)
        stats.llm_seconds += time.perf_counter() - t0
        stats.llm_calls += len(prompts)
        if len(scores) != len(prompts):
            raise RuntimeError(f"{backend!r} returned {len(scores)} scores for {len(prompts)} prompts")
        for key, score in zip(chunk, scores):
            cache[key] = float(score)
    return [cache[key] for key in items]


def annotate_pairs(
    backend: LLMBackend,
    pairs: Sequence[CaptionPair],
    skills: Mapping[str, str],
    mode: str = "pointwise",
    *,
    score_cache: ScoreCache | None = None,
    margin: float = 0.0,
    stats: AnnotationStats | None = None,
    max_tokens: int = 1024,
    retry_max_tokens: int = 64,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[Preference]:
    """One Preference per pair, in order.

    `skills` maps a skill name to its preference modifier. `score_cache` (pointwise) is read
    and updated in place. `margin` (pointwise) is the score difference below which a pair is a
    tie. `max_tokens`, `temperature` and `seed` apply to pairwise generation.
    """
    if mode not in MODES:
        raise ValueError(f"unknown annotation mode {mode!r}; use one of {MODES}")
    stats = stats if stats is not None else AnnotationStats()
    for pair in pairs:  # fail before any LLM call on an unknown skill
        _modifier(skills, pair.skill)
    if mode == "pointwise":
        labels = _pointwise_labels(backend, pairs, skills, score_cache, margin, stats)
    else:
        labels = _pairwise_labels(
            backend, pairs, skills, stats, max_tokens, retry_max_tokens, temperature, seed
        )
    version = prompt_version(mode)
    now = time.time()
    preferences = [
        Preference(pair=pair, label=label, backend=backend.name, model=backend.model,
                   prompt_version=version, created_at=now)
        for pair, label in zip(pairs, labels)
    ]
    stats.pairs += len(pairs)
    stats.unknown += sum(label == LABEL_UNKNOWN for label in labels)
    stats.labels += sum(label != LABEL_UNKNOWN for label in labels)
    return preferences


def _pointwise_labels(backend, pairs, skills, score_cache, margin, stats) -> list[int]:
    items = []
    for pair in pairs:
        items.append((pair.skill, pair.first.text))
        items.append((pair.skill, pair.second.text))
    scores = score_captions(backend, items, skills, score_cache, stats)
    return [pair_label_from_scores(scores[2 * i], scores[2 * i + 1], margin) for i in range(len(pairs))]


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
