"""Annotation prompts (spec §2.2), written in our own words.

Two ways of asking an LLM about a caption pair for one skill:

* **pairwise** (the paper's way): one chain-of-thought conversation shows both captions and
  asks for ``("best_description": 1|2|None)``; a retry turn follows when the answer cannot be
  parsed (see :mod:`mmotif.annotators.parsing`).
* **pointwise** (mmotif's CPU default): one short Yes/No question per (skill, caption); the
  score of a caption is ``logP(Yes) - logP(No)`` of the first answer token, and a pair's label
  comes from comparing the two scores (:func:`pair_label_from_scores`). Scores are cached per
  (skill, caption text), so a caption seen in many pairs costs one LLM call per skill, and
  small models' position bias on pairwise prompts does not arise.

Messages are OpenAI-style ``{"role": ..., "content": ...}`` dicts; every backend applies its
own chat template.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from mmotif.contract import LABEL_FIRST, LABEL_SECOND, LABEL_TIE, LABEL_UNKNOWN

# Bump when any text below changes: preferences record it, so labels from different prompt
# texts are never silently mixed.
PROMPT_VERSION = "4"  # 2: pointwise questions may follow the skill's solved examples; 3: a god's-wrath No for every skill; 4: a costly kill is a Yes for the discoverer

Message = dict[str, str]

SYSTEM_PROMPT = (
    "You are a helpful and honest judge of particular kinds of NetHack gameplay. "
    "Base everything you say on the text you are given and on what you know about NetHack; "
    "never invent facts that are not there."
)

# The same for every skill (§2.2): never anger the god.
GOD_CLAUSE = (
    "Whatever the preference, any event that angers or displeases the god "
    "(for example the god thundering or booming) is to be avoided."
)

PAIRWISE_TEMPLATE = """\
Below are two short descriptions of moments from games of NetHack. Think it through step by step:
1. Briefly state what you know about NetHack and what the goal of the game is.
2. Explain what each description means, one at a time, using only the description itself and \
your knowledge of NetHack.
3. Compare the two descriptions, reasoning from first principles.

The preference you should look for: {modifier}
{god_clause}

Finish your answer by naming the description that best fits the preference, written exactly as \
("best_description": 1) or ("best_description": 2). If both descriptions contain undesirable \
events, write ("best_description": None) instead.

{{
description_1: "{first}"
}}

{{
description_2: "{second}"
}}"""

RETRY_PROMPT = (
    "So which of the two descriptions fits the preference best? Reply only with "
    '("best_description": 1), ("best_description": 2) or ("best_description": None).'
)

POINTWISE_SYSTEM_PROMPT = (
    "You are an honest judge of NetHack gameplay. You answer questions with a single word, "
    "Yes or No."
)

# The skill's preference comes before the caption, so that everything up to the caption is the
# same for every caption of a skill (a backend may reuse that prefix's KV cache).
POINTWISE_TEMPLATE = """\
The player is looking for this: {modifier}
{god_clause}

Here is what happened over a short stretch of a game of NetHack:
{{
{caption}
}}

Does this stretch of the game show what the player is looking for? Answer Yes or No."""


def prompt_version(mode: str) -> str:
    """The string a Preference records for labels made with `mode` ("pairwise"/"pointwise")."""
    if mode not in ("pairwise", "pointwise"):
        raise ValueError(f"unknown annotation mode {mode!r}; use 'pairwise' or 'pointwise'")
    return f"{mode}-v{PROMPT_VERSION}"


def preference_digest(modifier: str) -> str:
    """Short sha256 of a skill's preference text as the prompts show it (stripped): labels
    record it, so labels made for another wording of the skill are told apart."""
    return hashlib.sha256(modifier.strip().encode("utf-8", "surrogatepass")).hexdigest()[:12]


def pairwise_messages(modifier: str, first: str, second: str) -> list[Message]:
    """The chain-of-thought conversation comparing two caption texts for one skill."""
    user = PAIRWISE_TEMPLATE.format(
        modifier=modifier.strip(), god_clause=GOD_CLAUSE, first=first, second=second
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def retry_messages(conversation: list[Message], answer: str) -> list[Message]:
    """The conversation continued after an unparseable `answer`: the answer, then the retry turn."""
    return [
        *conversation,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": RETRY_PROMPT},
    ]


def pointwise_messages(modifier: str, caption: str,
                       examples: Sequence[tuple[str, str]] = ()) -> list[Message]:
    """The Yes/No question "does this caption fit the skill's preference?", after the
    skill's solved `examples` ((caption, "Yes"|"No") turns, few-shot). Everything up to the
    last caption is the same for every caption of a skill (one cached prefix)."""
    def question(text: str) -> Message:
        content = POINTWISE_TEMPLATE.format(modifier=modifier.strip(), god_clause=GOD_CLAUSE, caption=text)
        return {"role": "user", "content": content}

    messages = [{"role": "system", "content": POINTWISE_SYSTEM_PROMPT}]
    for text, answer in examples:
        messages += [question(text), {"role": "assistant", "content": answer}]
    return [*messages, question(caption)]


def pair_label_from_scores(s1: float, s2: float, margin: float = 0.0) -> int:
    """Pair label from two pointwise scores: the higher wins; within `margin` it is a tie.

    A non-finite score (a backend that failed to score) gives LABEL_UNKNOWN.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not (math.isfinite(s1) and math.isfinite(s2)):
        return LABEL_UNKNOWN
    if abs(s1 - s2) <= margin:
        return LABEL_TIE
    return LABEL_FIRST if s1 > s2 else LABEL_SECOND
