"""Observation features computed from a game (spec §4.6, §5.2, §7.1).

Everything here writes into preallocated arrays: it runs once per env step.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from mmotif.contract import NLE_BLSTATS

# blstats indices (NLE_BL_*)
BL_X, BL_Y, BL_SCORE, BL_GOLD, BL_HP, BL_HPMAX, BL_DEPTH = 0, 1, 9, 13, 10, 11, 12
BL_XL, BL_TIME, BL_HUNGER, BL_DNUM = 18, 20, 21, 23

# Fixed per-field scale of the reference (§7.1). Fields scaled by 0 (stats, score, depth,
# gold, ...) are hidden from the policy, as in the reference.
BLSTATS_SCALE = np.zeros(NLE_BLSTATS, np.float32)
BLSTATS_SCALE[[BL_X]] = 1 / 79
BLSTATS_SCALE[[BL_Y]] = 1 / 21
BLSTATS_SCALE[[10, 11, 14, 15, 16, 18]] = 1 / 10  # HP, HPmax, energy, energy max, AC, XL
BLSTATS_SCALE[BL_TIME] = 1 / 1000
BLSTATS_SCALE[[BL_HUNGER, BL_DNUM, 25]] = 1.0  # hunger, dungeon number, condition bits

FOOD_CLASS, POTION_CLASS, COIN_CLASS = 7, 8, 12  # NetHack object classes
DOWNSTAIR_GLYPH = 2359 + 24  # GLYPH_CMAP_OFF + S_dnstair
MINES_DNUM = 2
UNKNOWN_BRANCH = -2  # branch_depth (the Mines-branch level) until the hero has seen the branch
WINDOW_RADIUS = 3  # 7x7 window of the initiation functions


def write_crop(tty_chars, tty_colors, x: int, y: int, out_chars, out_colors) -> None:
    """Copy the tty cells around the hero into out_* (zero outside the screen).

    The hero's tty row is map row + 1 (row 0 holds the message); the reference used the
    map row and so shifted its crop up by one. We centre on the hero's real cell.
    """
    h, w = out_chars.shape
    row, col = y + 1, x
    top, left = row - h // 2, col - w // 2
    r0, r1 = max(top, 0), min(top + h, tty_chars.shape[0])
    c0, c1 = max(left, 0), min(left + w, tty_chars.shape[1])
    if r0 != top or c0 != left or r1 != top + h or c1 != left + w:
        out_chars.fill(0)
        out_colors.fill(0)
    out_chars[r0 - top : r1 - top, c0 - left : c1 - left] = tty_chars[r0:r1, c0:c1]
    out_colors[r0 - top : r1 - top, c0 - left : c1 - left] = tty_colors[r0:r1, c0:c1]


def window_slices(x: int, y: int) -> tuple[slice, slice]:
    """(rows, cols) of the tty window of the initiation functions: 7x7 around the hero,
    clipped at the screen edge.

    Fixes two quirks of the reference (§5.2): it sliced tty rows with the *map* row (so the
    window sat one row too high) and its negative slice starts made the window silently
    empty near the top or left edge. Here the window is centred on the hero's tty cell
    and clipped, never emptied.
    """
    row = y + 1
    return (slice(max(row - WINDOW_RADIUS, 0), row + WINDOW_RADIUS + 1),
            slice(max(x - WINDOW_RADIUS, 0), x + WINDOW_RADIUS + 1))


def window_around_hero(tty_chars, tty_colors, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """The window of `window_slices`, hero's cell blanked in the colours (never matches)."""
    rows, cols = window_slices(x, y)
    chars = tty_chars[rows, cols]
    colors = tty_colors[rows, cols].copy()
    colors[y + 1 - rows.start, x - cols.start] = -1 if colors.dtype.kind == "i" else 255
    return chars, colors


class InventoryCounts:
    """Counts the features need from the inventory, recomputed only when it changes."""

    def __init__(self):
        self._key = b""
        self.new_items = self.potions = self.food = 0

    def update(self, letters, oclasses, starting_letters: frozenset[int]) -> None:
        key = letters.tobytes() + oclasses.tobytes()
        if key == self._key:
            return
        self._key = key
        new_items = potions = food = 0
        for letter, oclass in zip(letters.tolist(), oclasses.tolist()):
            if letter == 0:
                break
            potions += oclass == POTION_CLASS
            food += oclass == FOOD_CLASS
            # neither food nor coins, and not in the starting inventory
            if oclass != FOOD_CLASS and oclass != COIN_CLASS and letter not in starting_letters:
                new_items += 1
        self.new_items, self.potions, self.food = new_items, potions, food


def write_blstats(blstats, spell_type: int, inventory: InventoryCounts, skill: int, out: np.ndarray) -> None:
    """27 scaled blstats, 3 extras (spell type, #potions, #food), skill one-hot."""
    head = out[:NLE_BLSTATS]
    np.copyto(head, blstats, casting="unsafe")
    head *= BLSTATS_SCALE
    out[NLE_BLSTATS:] = 0
    out[NLE_BLSTATS] = spell_type
    out[NLE_BLSTATS + 1] = inventory.potions
    out[NLE_BLSTATS + 2] = inventory.food
    out[NLE_BLSTATS + 3 + skill] = 1


class MessageCounter:
    """Episodic count of each message among the `max_keys` most recently seen (§4.6).

    A message evicted from the cache starts again from 1 when it comes back.
    """

    def __init__(self, max_keys: int = 20):
        self.max_keys = max_keys
        self._counts: OrderedDict[bytes, int] = OrderedDict()

    def reset(self) -> None:
        self._counts.clear()

    def add(self, message: bytes) -> int:
        counts = self._counts
        n = counts.pop(message, 0) + 1
        counts[message] = n  # re-inserted at the most recent end
        if len(counts) > self.max_keys:
            counts.popitem(last=False)
        return n


def sees_branch_staircase(glyphs) -> bool:
    """More than one down staircase in view: this level holds the Gnomish Mines branch."""
    return np.count_nonzero(glyphs == DOWNSTAIR_GLYPH) > 1
