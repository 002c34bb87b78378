"""Game events named from a caption: what happened over its stretch of play.

One vocabulary for everything that needs to know *what* a caption shows without an LLM:
the rules annotator (labels), the pair sampler (strata of rare moments) and the annotator
quality bench (targets). Events are read from the caption text alone, exactly as the LLM
reads it: the current message and the state-change lines that `mmotif.nethack.captions`
writes.
"""

from __future__ import annotations

import re

from mmotif.contract import Caption

# Message patterns, matched on the current message (NetHack's own wording).
MESSAGE_EVENTS: dict[str, re.Pattern] = {
    "death": re.compile(r"You die\.\.\."),
    # NetHack calls a killed pet "poor" ("You kill the poor kitten!"); "You murderer!" follows
    # killing a peaceful human. Neither is a fight won: both cost alignment and Luck.
    "pet_kill": re.compile(r"\bYou (kill|destroy) the poor\b|\bYou murderer\b"),
    "kill": re.compile(r"\bYou (kill|destroy) (?!the poor\b)"),
    "hidden": re.compile(r"\bYou find a hidden\b"),
    # stepping onto objects: what exploring a level turns up (the action set cannot pick up)
    "item": re.compile(r"\bYou see here\b|\bThings that are here\b|\bThere are (?:several|many) objects here\b"),
    "gold_pickup": re.compile(r"^\$ - \d+ gold pieces?\b"),
    "xp_level": re.compile(r"\bWelcome to experience level\b"),
    "stairs_down": re.compile(r"\bThere is a staircase down here\b"),
    "stairs_up": re.compile(r"\bThere is a staircase up here\b"),
    "altar": re.compile(r"\baltar\b|\b(amber|black) flash\b"),
    "shop": re.compile(r"\bshopkeeper\b|\bWelcome to (?!experience level)|\bzorkmids?\b|\boffers \d+ gold\b"
                       r"|\b[Ss]ell it\b|\bYou sold\b|\bfor sale\b|\bYou owe\b"),
    "prayer": re.compile(r"\bYou begin praying\b|\bYou finish your prayer\b"),
    # The god's anger in NetHack's own words (pray.c: angrygods, gods_angry, godvoice,
    # god_zaps_you, punish, and the minion it sends, named "<minion> of <god>"). A random
    # policy prays every ~30 steps, so these are among the commonest messages of its games.
    "god_angry": re.compile(
        r"\bThou hast angered me\b|\bis displeased\b|\bThe voice of .+ (?:booms|thunders|rings out)\b"
        r"|\bThou (?:hast strayed from the path|art arrogant|must relearn thy lessons|durst (?:call upon|scorn) me)\b"
        r"|\bThen die, (?:mortal|creature)\b|\bblack glow surrounds you\b|\bpunished for your misbehavior\b"
        r"|\bYou feel foolish\b|\bbolt of lightning\b|\bwide-angle disintegration beam\b"
        r"|\b(?:elemental|Angel|Aleax|Archon|ki-rin) of [A-Z]",
        re.IGNORECASE),
}
# State-change lines, matched on the caption text (see captions.caption_text).
CHANGE_EVENTS: dict[str, str] = {
    "gold_gain": "The gold went up",
    "gold_loss": "The gold went down",
    "level_up": "The experience level went up",
    "hp_loss": "The HP went down",
}
LEVEL_EVENTS = {"descent": "The dungeon level went down", "ascent": "The dungeon level went up"}
# "message": some other message; "nothing": no message and no change at all.
EVENTS = (*LEVEL_EVENTS, *MESSAGE_EVENTS, *CHANGE_EVENTS, "message", "nothing")


_CURRENT_MESSAGE = re.compile(r'and the current message is "(.*)"$', re.MULTILINE)


def current_message(text: str) -> str:
    """The current message of a caption text ("" when the text is not a caption)."""
    found = _CURRENT_MESSAGE.search(text)
    return found.group(1) if found else ""


def text_events(text: str) -> frozenset[str]:
    """The events of one caption text (never empty: "message" or "nothing" when no other)."""
    message = current_message(text)
    found = {name for name, line in (*LEVEL_EVENTS.items(), *CHANGE_EVENTS.items()) if line in text}
    found.update(name for name, pattern in MESSAGE_EVENTS.items() if pattern.search(message))
    if not found:
        found.add("message" if message.strip() else "nothing")
    return frozenset(found)


def caption_events(caption: Caption) -> frozenset[str]:
    return text_events(caption.text)
