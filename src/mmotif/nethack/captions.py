"""Captions as the annotator LLM reads them, built from a (previous, current) state pair
(spec §2.3): the message pair, then changes of dungeon level, gold, HP, experience level
and hunger, one per line.
"""

from __future__ import annotations

import numpy as np

from mmotif.contract import HUNGER_WORDS, Caption, GameState
from mmotif.nethack.features import BL_DEPTH, BL_GOLD, BL_HP, BL_HPMAX, BL_HUNGER, BL_XL


def game_state(message: bytes | str, blstats: np.ndarray) -> GameState:
    if isinstance(message, bytes):
        message = message.rstrip(b"\0").decode("latin-1")
    b = blstats
    return GameState(
        message=message.strip(),
        depth=int(b[BL_DEPTH]), gold=int(b[BL_GOLD]), hp=int(b[BL_HP]),
        hp_max=int(b[BL_HPMAX]), level=int(b[BL_XL]), hunger=int(b[BL_HUNGER]),
    )


def _change(name: str, before, after, up: str = "went up", down: str = "went down") -> str:
    if after > before:
        return f"{name} {up} from {before} to {after}"
    if after < before:
        return f"{name} {down} from {before} to {after}"
    return f"{name} did not change"


def _hunger_word(h: int) -> str:
    return HUNGER_WORDS[h] if 0 <= h < len(HUNGER_WORDS) else f"state {h}"


def caption_text(prev: GameState, cur: GameState) -> str:
    lines = [
        f'The earlier message was "{prev.message}" and the current message is "{cur.message}"',
        # Depth grows downwards: a larger depth is "down".
        _change("The dungeon level", prev.depth, cur.depth, up="went down", down="went up"),
        _change("The gold", prev.gold, cur.gold),
        _hp_line(prev, cur),
        _change("The experience level", prev.level, cur.level),
        (f"The hunger state changed from {_hunger_word(prev.hunger)} to {_hunger_word(cur.hunger)}"
         if prev.hunger != cur.hunger else "The hunger state did not change"),
    ]
    return "\n".join(lines)


def _hp_line(prev: GameState, cur: GameState) -> str:
    if (prev.hp, prev.hp_max) == (cur.hp, cur.hp_max):
        return "The HP did not change"
    a, b = f"{prev.hp}/{prev.hp_max}", f"{cur.hp}/{cur.hp_max}"
    if cur.hp > prev.hp or (cur.hp == prev.hp and cur.hp_max > prev.hp_max):
        return f"The HP went up from {a} to {b}"
    return f"The HP went down from {a} to {b}"


def make_caption(prev: GameState, cur: GameState) -> Caption:
    change = int(np.sign(cur.depth - prev.depth))
    return Caption(text=caption_text(prev, cur), message=cur.message, depth_change=change)
