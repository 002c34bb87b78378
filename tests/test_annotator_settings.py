"""The annotator section's generation settings reach the backend's calls (a scripted backend
records them): the pairwise retry's token cap comes from `annotator.retry_max_tokens`, and
the labels record the preference text's digest."""

from __future__ import annotations

from mmotif.annotators.annotate import annotate_pairs
from mmotif.annotators.offline import generation_from_config
from mmotif.annotators.prompts import preference_digest
from mmotif.config import load_config
from mmotif.contract import LABEL_FIRST, Caption, CaptionPair
from mmotif.llm.base import LLMBackend


class ScriptedBackend(LLMBackend):
    """Answers with no verdict first, then with one; records every call's settings."""

    name, model = "scripted", "scripted-1"

    def __init__(self):
        self.calls: list[dict] = []

    def chat(self, messages_batch, max_tokens=512, temperature=0.0, top_p=None, seed=None, top_k=None):
        self.calls.append({"max_tokens": max_tokens, "temperature": temperature})
        answer = "I cannot decide." if len(self.calls) == 1 else '("best_description": 1)'
        return [answer] * len(messages_batch)

    def yes_no_scores(self, prompts):
        raise AssertionError("pairwise mode asks no Yes/No question")


def test_the_pairwise_retry_uses_the_configured_token_cap():
    cfg = load_config(preset_name="local", overrides={"annotator": {
        "mode": "pairwise", "max_tokens": 300, "retry_max_tokens": 17, "temperature": 0.3}})
    backend = ScriptedBackend()
    skills = {s.name: s.preference for s in cfg.skills}
    pair = CaptionPair("descender", Caption("a", "You descend the stairs.", 1), Caption("b", "", 0))
    [pref] = annotate_pairs(backend, [pair], skills, cfg.annotator.mode, **generation_from_config(cfg))
    assert backend.calls == [{"max_tokens": 300, "temperature": 0.3}, {"max_tokens": 17, "temperature": 0.3}]
    assert pref.label == LABEL_FIRST and pref.preference_digest == preference_digest(skills["descender"])
