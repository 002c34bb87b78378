"""Answer parsing (spec §2.4) and the prompt texts: fast, no model."""

from __future__ import annotations

import math

import pytest

from mmotif.annotators.parsing import final_label, parse_answer
from mmotif.annotators.prompts import (
    GOD_CLAUSE,
    PROMPT_VERSION,
    RETRY_PROMPT,
    pair_label_from_scores,
    pairwise_messages,
    pointwise_messages,
    prompt_version,
    retry_messages,
)
from mmotif.contract import LABEL_FIRST, LABEL_SECOND, LABEL_TIE, LABEL_UNKNOWN

FIRST, SECOND, TIE = LABEL_FIRST, LABEL_SECOND, LABEL_TIE

ANSWERS = [
    # the requested format
    ('("best_description": 1)', FIRST),
    ('("best_description": 2)', SECOND),
    ('("best_description": None)', TIE),
    # case, quotes, spacing, colon
    ('("Best_Description": 2)', SECOND),
    ("('best_description': 1)", FIRST),
    ('"best_description":2', SECOND),
    ("best_description 1", FIRST),
    ("BEST_DESCRIPTION: NONE", TIE),
    ('best_description: "2"', SECOND),
    ("best_description = 1", FIRST),
    # markdown: escaped underscores, bold, code
    (r'("best\_description": 2)', SECOND),
    (r"**best\_description**: 1", FIRST),
    ("**best_description: 2**", SECOND),
    ("`best_description`: None", TIE),
    (r'\("best\_description": 1\)', FIRST),
    # spaces/hyphens instead of the underscore
    ("Best description: 2", SECOND),
    ("best-description: 1", FIRST),
    # one word before the value
    ("best_description: Description 2", SECOND),
    ("best_description: description_1", FIRST),
    ("The best_description is 2.", SECOND),
    ("best_description: is None", TIE),
    ("best_description: #1", FIRST),
    # value followed by punctuation or more text
    ('So: ("best_description": 2). Description 2 shows going down.', SECOND),
    ("best_description: 1, because the agent descends.", FIRST),
    ("best_description: none of them is good", TIE),
    # long chain-of-thought with the answer at the end
    (
        "NetHack is a roguelike game whose goal is to retrieve the Amulet of Yendor.\n"
        "Description 1 says the player descended the stairs, so the dungeon level increased.\n"
        "Description 2 says the player killed a newt; the level did not change.\n"
        "Comparing them, description 1 fits the preference for going deeper.\n\n"
        '("best_description": 1)',
        FIRST,
    ),
    # the conclusion wins; options repeated afterwards as a list are not answers
    ('("best_description": 2)\nThe options were ("best_description": 1) or None.', SECOND),
]


@pytest.mark.parametrize("text,label", ANSWERS)
def test_parses_realistic_answers(text, label):
    assert parse_answer(text) == label


NO_ANSWER = [
    "",
    None,
    "Description 2 is better because the player goes down.",
    "I think the second one.",
    "best_description: 12",  # not 1 or 2
    "best_description: 1.5",
    "best_description: maybe probably 2",  # two words before the value
    "the best description would be the first one",
    "best_description: nonetheless unclear",
    "description_1: the player descends",
]


@pytest.mark.parametrize("text", NO_ANSWER)
def test_unparseable_answers_ask_for_a_retry(text):
    assert parse_answer(text) is None


def test_final_label_uses_the_retry_then_gives_up():
    assert final_label('("best_description": 2)', None) == SECOND
    assert final_label("no idea", '("best_description": 1)') == FIRST
    assert final_label("no idea", "best_description: None") == TIE
    assert final_label("no idea", "still no idea") == LABEL_UNKNOWN
    assert final_label(None, None) == LABEL_UNKNOWN


def test_pairwise_prompt_has_every_part():
    modifier = "Favour going down the stairs."
    messages = pairwise_messages(modifier, "caption one\nline two", "caption two")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert modifier in user
    assert GOD_CLAUSE in user
    for form in ('("best_description": 1)', '("best_description": 2)', '("best_description": None)'):
        assert form in user
    assert "description_1" in user and "description_2" in user
    assert user.index("caption one") < user.index("caption two")
    assert "step by step" in user and "first principles" in user


def test_retry_turn_extends_the_conversation():
    conversation = pairwise_messages("m", "a", "b")
    extended = retry_messages(conversation, "I cannot decide")
    assert extended[:2] == conversation
    assert extended[2] == {"role": "assistant", "content": "I cannot decide"}
    assert extended[3] == {"role": "user", "content": RETRY_PROMPT}
    assert parse_answer(RETRY_PROMPT) is None  # the retry text only lists the forms: no answer


def test_pointwise_prompt_puts_the_shared_part_first():
    a = pointwise_messages("Favour selling.", "caption A")
    b = pointwise_messages("Favour selling.", "caption B")
    assert a[0] == b[0]
    ua, ub = a[1]["content"], b[1]["content"]
    prefix = ua[: ua.index("caption A")]
    assert ub.startswith(prefix)  # same per-skill prefix: reusable KV cache
    assert "Favour selling." in prefix and GOD_CLAUSE in prefix
    assert ua.rstrip().endswith("Answer Yes or No.")


def test_pair_label_from_scores():
    assert pair_label_from_scores(2.0, -1.0) == FIRST
    assert pair_label_from_scores(-1.0, 2.0) == SECOND
    assert pair_label_from_scores(1.0, 1.0) == TIE
    assert pair_label_from_scores(1.0, 1.3, margin=0.5) == TIE
    assert pair_label_from_scores(1.0, 1.6, margin=0.5) == SECOND
    assert pair_label_from_scores(math.nan, 1.0) == LABEL_UNKNOWN
    assert pair_label_from_scores(math.inf, 1.0) == LABEL_UNKNOWN
    with pytest.raises(ValueError):
        pair_label_from_scores(0.0, 1.0, margin=-1)


def test_prompt_version_names_the_mode():
    assert prompt_version("pairwise") == f"pairwise-v{PROMPT_VERSION}"
    assert prompt_version("pointwise") == f"pointwise-v{PROMPT_VERSION}"
    with pytest.raises(ValueError):
        prompt_version("listwise")


def test_parsing_is_linear_time_on_hostile_answers():
    import time

    hostile = ["best_description" + " " * 200_000 + "x",
               ("best_description " * 20_000) + "!",
               "best_description:" + " \"'*" * 50_000 + "maybe"]
    t0 = time.perf_counter()
    for text in hostile:
        assert parse_answer(text) is None
    assert time.perf_counter() - t0 < 1.0


def test_the_conclusion_wins_over_a_restated_format():
    answer = ('I must answer ("best_description": 1) or ("best_description": 2). Description 2 '
              'shows the descent, so ("best_description": 2)')
    assert parse_answer(answer) == SECOND
    assert parse_answer('("best_description": 1) ... on reflection, best_description: None') == TIE


def test_few_shot_examples_come_first_and_keep_one_shared_prefix():
    from mmotif.skills.specs import PAPER_SKILLS

    spec = PAPER_SKILLS[1]
    examples = [(e.caption, e.answer) for e in spec.examples]
    a = pointwise_messages(spec.preference, "caption A", examples)
    b = pointwise_messages(spec.preference, "caption B", examples)
    assert len(a) == 2 + 2 * len(examples) and a[:-1] == b[:-1]
    assert [m["content"] for m in a[2:-1:2]] == [e.answer for e in spec.examples]
    assert "You descend the stairs." in a[1]["content"] and "caption A" in a[-1]["content"]
    assert pointwise_messages(spec.preference, "caption A") == [a[0], a[-1]]
