"""Annotation: prompts, answer parsing, LLM backends and the labelling core (spec §2-§3).

Importing this package does not import torch or transformers; backends load them when built.

    from mmotif.annotators import annotate_pairs, make_backend
    backend = make_backend("embedded", model="qwen2.5-coder-0.5b", num_threads=2)
    prefs = annotate_pairs(backend, pairs, {"descender": "..."}, mode="pointwise", score_cache={})
"""

from mmotif.annotators.annotate import AnnotationStats, TieRule, annotate_pairs, score_captions, score_cache_key
from mmotif.annotators.backends import BackendError, LLMBackend, make_backend
from mmotif.annotators.parsing import final_label, parse_answer
from mmotif.annotators.prompts import PROMPT_VERSION, pair_label_from_scores, prompt_version

__all__ = [
    "PROMPT_VERSION",
    "AnnotationStats",
    "TieRule",
    "BackendError",
    "LLMBackend",
    "annotate_pairs",
    "final_label",
    "make_backend",
    "pair_label_from_scores",
    "parse_answer",
    "prompt_version",
    "score_cache_key",
    "score_captions",
]
