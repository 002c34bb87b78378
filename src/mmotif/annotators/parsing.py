"""Reading the label out of a pairwise answer (spec §2.4).

The first match of one forgiving pattern wins: ``best_description`` in any case, with the
underscore optional or replaced by spaces/hyphens, markdown escapes (``best\\_description``)
and emphasis or quotes around the key, an optional colon, one optional word before the value
("is", "Description", ...), and the value ``1``, ``2`` or ``None``.

``1`` → LABEL_FIRST, ``2`` → LABEL_SECOND, ``None`` → LABEL_TIE (both undesirable), no match
→ ``None``, meaning "ask again" (the retry turn); a second failure is LABEL_UNKNOWN.
"""

from __future__ import annotations

import re

from mmotif.contract import LABEL_FIRST, LABEL_SECOND, LABEL_TIE, LABEL_UNKNOWN

# Pieces of the pattern, named so the whole stays readable.
_KEY = r"best[\s_\\\-]*description"  # best_description, best\_description, Best Description
_DECOR = r"[\s\"'`*\\]*"  # quotes, markdown bold/italics/escapes, spaces around the key
_COLON = r"(?:[:=]|\bis\b)?"  # "best_description": / = / "the best_description is"
_WORD = r"(?:[a-z]+[\s_#\\]*)?"  # one optional word before the value: "Description 2", "is 1"
_OPEN = r"[\s\"'`*(\[#]*"  # an opening quote/bracket/emphasis before the value
_VALUE = r"(1|2|none)(?!\w|\.\d)"  # 1, 2 or None, not the start of 12 / 1.5 / nonetheless

ANSWER_RE = re.compile(_KEY + _DECOR + _COLON + _DECOR + _WORD + _OPEN + _VALUE, re.IGNORECASE)

_VALUE_TO_LABEL = {"1": LABEL_FIRST, "2": LABEL_SECOND, "none": LABEL_TIE}


def parse_answer(text: str | None) -> int | None:
    """Label from one model answer; ``None`` when nothing matches (the caller retries)."""
    if not text:
        return None
    match = ANSWER_RE.search(text)
    if match is None:
        return None
    return _VALUE_TO_LABEL[match.group(1).lower()]


def final_label(first_answer: str | None, retry_answer: str | None = None) -> int:
    """Label after at most one retry: the first parseable answer, else LABEL_UNKNOWN."""
    label = parse_answer(first_answer)
    if label is None:
        label = parse_answer(retry_answer)
    return LABEL_UNKNOWN if label is None else label
