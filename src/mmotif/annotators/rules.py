"""The rule-based annotator (`annotator.backend: rules`): a control, never the default.

It scores a caption for a skill by adding the weights of the events the caption shows
(:mod:`mmotif.nethack.events`); a pair goes to the higher score, equal scores tie. Rules
are data: `DEFAULT_RULES` for the paper's five skills, or `annotator.rules` in the config.
Deterministic and instant, it separates "RL cannot learn what the labels say" from "the
labels say nothing", and it is the fast backend for tests. It reads no skill description:
what it favours is exactly what its weights say.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mmotif.llm.base import LLMBackend, Message
from mmotif.nethack.events import EVENTS, text_events

Rules = Mapping[str, Mapping[str, float]]  # skill -> event -> weight

# Rules read only what the reward model sees: the current message and the level change
# (spec §4.1). A state-change line alone (HP down over the caption's stretch) is not in the
# model's input, so a rule on it would be label noise to the model.
# Every skill avoids dying and angering the god (the prompts' god clause), praying included:
# the 28-action set prays with no altar and no trouble, which the god punishes (a
# uniform-random policy dies after ~90 steps, mostly by the god's wrath; ~570 steps with
# PRAY removed). Killing a pet is a murder, not a fight won.
_AVOID = {"death": -3.0, "god_angry": -3.0, "pet_kill": -3.0, "prayer": -1.0}
DEFAULT_RULES: dict[str, dict[str, float]] = {
    # "bold exploration of the level ... fighting monsters and collecting items such as gold".
    # Not "You see here <item>": an agent paid for it learns to drop its own items and step
    # back onto them (measured: DROP rose to 27% of its actions).
    "discoverer": {"kill": 1.0, "gold_pickup": 1.0, "hidden": 1.0, "xp_level": 1.0,
                   "descent": -2.0, "ascent": -2.0, **_AVOID},
    # a staircase underfoot is the step before the skill's goal, worth a third of it
    "descender": {"descent": 3.0, "stairs_down": 1.0, "ascent": -2.0, **_AVOID},
    "ascender": {"ascent": 3.0, "stairs_up": 1.0, "descent": -2.0, **_AVOID},
    "worshipper": {"altar": 2.0, **_AVOID},
    "merchant": {"shop": 2.0, "gold_pickup": 0.5, **_AVOID},
}
RULES_VERSION = "rules-v3"  # bump when DEFAULT_RULES or the events they read change: preferences record it


def resolve_rules(skills: Sequence[str], overrides: Rules | None = None) -> dict[str, dict[str, float]]:
    """Each skill's rules (overrides first, then defaults); a clear error for a skill with
    none or for an event name the vocabulary does not have."""
    overrides = overrides or {}
    unknown_skills = sorted(set(overrides) - set(skills))
    if unknown_skills:
        raise ValueError(f"annotator.rules names skills that are not configured: {unknown_skills}")
    out = {}
    for skill in skills:
        rules = overrides.get(skill, DEFAULT_RULES.get(skill))
        if rules is None:
            raise ValueError(f"annotator.backend is 'rules' but skill {skill!r} has no rules; give "
                             f"annotator.rules.{skill} as {{event: weight}} with events from {EVENTS}")
        bad = sorted(set(rules) - set(EVENTS))
        if bad:
            raise ValueError(f"annotator.rules.{skill}: unknown events {bad}; known: {EVENTS}")
        out[skill] = {event: float(w) for event, w in rules.items()}
    return out


def rule_score(rules: Mapping[str, float], text: str) -> float:
    return float(sum(rules.get(event, 0.0) for event in text_events(text)))


def rules_model_name(rules: Rules | None) -> str:
    """What the rules annotator records as its model: the default rules' version, marked when
    the config replaced some."""
    return RULES_VERSION if not rules else f"{RULES_VERSION}+config"


class RulesBackend(LLMBackend):
    """Scores captions by rules; plugs into `annotate_pairs` through `score_texts`."""

    name = "rules"
    exact_scores = True  # equal scores tie, different scores never do (no tie margin)

    def __init__(self, skills: Sequence[str], rules: Rules | None = None):
        self.rules = resolve_rules(skills, rules)
        self.model = rules_model_name(rules)

    def score_texts(self, items: Sequence[tuple[str, str]]) -> list[float]:
        """One score per (skill, caption text)."""
        return [rule_score(self.rules[skill], text) for skill, text in items]

    def yes_no_scores(self, prompts: list[list[Message]]) -> list[float]:
        raise NotImplementedError("the rules backend scores caption texts (score_texts), not prompts")

    def chat(self, messages_batch, max_tokens=512, temperature=0.0, top_p=1.0, seed=None) -> list[str]:
        raise NotImplementedError("the rules backend has no chat; use annotator.mode: pointwise")
