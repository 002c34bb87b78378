"""Annotation: prompts, answer parsing and the labelling core (spec §2-§3).

The LLM backends live in :mod:`mmotif.llm`. Importing this package does not import torch or
transformers; backends load them when built.

    from mmotif.annotators import annotate_pairs
    from mmotif.llm import SMALL_MODEL, make_backend
    backend = make_backend("embedded", model=SMALL_MODEL, num_threads=2)
    prefs = annotate_pairs(backend, pairs, {"descender": "..."}, mode="pointwise", score_cache={})
"""

from mmotif.annotators.annotate import AnnotationStats, TieRule, annotate_pairs, score_captions, score_cache_key
from mmotif.annotators.parsing import final_label, parse_answer
from mmotif.annotators.prompts import PROMPT_VERSION, pair_label_from_scores, prompt_version

__all__ = [
    "PROMPT_VERSION",
    "AnnotationStats",
    "TieRule",
    "annotate_pairs",
    "final_label",
    "pair_label_from_scores",
    "parse_answer",
    "prompt_version",
    "score_cache_key",
    "score_captions",
]
