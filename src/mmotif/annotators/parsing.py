"""Reading the label out of a pairwise answer (spec §2.4).

The *last* match of one forgiving pattern wins (an answer may restate the format before it
concludes), skipping matches that are listed as alternatives ("... 1) or (... 2)", "1), (2"): ``best_description`` in any case, with the underscore optional or replaced by
spaces/hyphens, markdown escapes (``best\\_description``) and emphasis or quotes around the
key, an optional colon, one optional word before the value ("is", "Description", ...), and
the value ``1``, ``2`` or ``None``.

Linear time: the key is found by a plain scan, and the rest of the pattern is matched with
possessive quantifiers on a bounded window after each key, so no answer (say, a long run of
spaces after the keyword) can make the regex engine backtrack without bound.

``1`` → LABEL_FIRST, ``2`` → LABEL_SECOND, ``None`` → LABEL_TIE (both undesirable), no match
→ ``None``, meaning "ask again" (the retry turn); a second failure is LABEL_UNKNOWN.
"""

from __future__ import annotations

import re

from mmotif.contract import LABEL_FIRST, LABEL_SECOND, LABEL_TIE, LABEL_UNKNOWN

# Pieces of the pattern, named so the whole stays readable.
_KEY = r"best[\s_\\\-]{0,4}description"  # best_description, best\_description, Best Description
_DECOR = r"[\s\"'`*\\]*+"  # quotes, markdown bold/italics/escapes, spaces around the key
_COLON = r"(?:[:=]|\bis\b)?"  # "best_description": / = / "the best_description is"
_WORD = r"(?:[a-z]{1,20}+[\s_#\\]*+)?"  # one optional word before the value: "Description 2", "is 1"
_OPEN = r"[\s\"'`*(\[#]*+"  # an opening quote/bracket/emphasis before the value
_VALUE = r"(1|2|none)(?!\w|\.\d)"  # 1, 2 or None, not the start of 12 / 1.5 / nonetheless

KEY_RE = re.compile(_KEY, re.IGNORECASE)
VALUE_RE = re.compile(_DECOR + _COLON + _DECOR + _WORD + _OPEN + _VALUE, re.IGNORECASE)
VALUE_WINDOW = 80  # characters after the key that may hold its value
_LISTED_BEFORE = re.compile(r"\bor[\s(\"'`*\[]{0,4}$", re.IGNORECASE)  # "... or (" + key
_LISTED_AFTER = re.compile(r"[\s)\"'`*\]]{0,4}(?:or\b|,[\s(\"'`*\[]{0,4}best)", re.IGNORECASE)  # ") or", "), (best"

_VALUE_TO_LABEL = {"1": LABEL_FIRST, "2": LABEL_SECOND, "none": LABEL_TIE}


def parse_answer(text: str | None) -> int | None:
    """Label from one model answer; ``None`` when nothing matches (the caller retries)."""
    if not text:
        return None
    label = None
    for key in KEY_RE.finditer(text):
        match = VALUE_RE.match(text[key.end():key.end() + VALUE_WINDOW])
        if match is None:
            continue
        end = key.end() + match.end()
        listed = (_LISTED_BEFORE.search(text[max(0, key.start() - 8):key.start()])
                  or _LISTED_AFTER.match(text, end, end + 16))
        if not listed:
            label = _VALUE_TO_LABEL[match.group(1).lower()]
    return label


def final_label(first_answer: str | None, retry_answer: str | None = None) -> int:
    """Label after at most one retry: the first parseable answer, else LABEL_UNKNOWN."""
    label = parse_answer(first_answer)
    if label is None:
        label = parse_answer(retry_answer)
    return LABEL_UNKNOWN if label is None else label
