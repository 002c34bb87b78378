"""Hand-written NetHack moments for smoke tests, benchmarks and sanity checks of annotators.

Captions are built with the real caption code (:func:`mmotif.nethack.captions.make_caption`),
so they read exactly as captions from rollouts do (§2.3's six lines).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mmotif.contract import Caption, CaptionPair, GameState

HUNGER = {"Satiated": 0, "Normal": 1, "Hungry": 2, "Weak": 3}


@dataclass(frozen=True)
class Moment:
    """A (previous, current) pair of game states, written compactly."""

    message: str
    previous_message: str = ""
    depth: tuple[int, int] = (1, 1)
    gold: tuple[int, int] = (0, 0)
    hp: tuple[int, int] = (14, 14)
    hp_max: tuple[int, int] = (14, 14)
    level: tuple[int, int] = (1, 1)
    hunger: tuple[str, str] = ("Normal", "Normal")

    def caption(self) -> Caption:
        from mmotif.nethack.captions import make_caption

        def state(i: int, message: str) -> GameState:
            return GameState(
                message=message, depth=self.depth[i], gold=self.gold[i], hp=self.hp[i],
                hp_max=self.hp_max[i], level=self.level[i], hunger=HUNGER[self.hunger[i]],
            )

        return make_caption(state(0, self.previous_message), state(1, self.message))


def _m(message: str, **kw) -> Moment:
    return Moment(message=message, **kw)


# Five obvious (better, worse) pairs per paper skill: the first moment clearly fits the skill's
# preference better than the second.
OBVIOUS_PAIRS: dict[str, list[tuple[Moment, Moment]]] = {
    "descender": [
        (_m("You descend the stairs.", depth=(1, 2)), _m("You kill the newt!")),
        (_m("You fall through a trap door!", depth=(3, 4), hp=(10, 9)),
         _m("You climb up the stairs.", depth=(3, 2))),
        (_m("There is a staircase down here.", previous_message="You descend the stairs.", depth=(2, 3)),
         _m("You hear some noises in the distance.", depth=(2, 2))),
        (_m("You descend the stairs.", depth=(4, 5), gold=(30, 30)),
         _m("You see here 12 gold pieces.", depth=(4, 4), gold=(30, 42))),
        (_m("You descend the stairs.", depth=(5, 6), hunger=("Normal", "Hungry")),
         _m("You find a hidden passage.", depth=(5, 5))),
    ],
    "ascender": [
        (_m("You climb up the stairs.", depth=(3, 2)), _m("You descend the stairs.", depth=(3, 4))),
        (_m("You climb up the stairs.", depth=(5, 4)), _m("You kill the jackal!", depth=(5, 5))),
        (_m("There is a staircase up here.", previous_message="You climb up the stairs.", depth=(4, 3)),
         _m("You hear the footsteps of a guard on patrol.", depth=(4, 4))),
        (_m("You climb up the stairs.", depth=(2, 1), hp=(12, 12), hp_max=(14, 14)),
         _m("You see here a scroll labeled ELAM EBOW.", depth=(2, 2))),
        (_m("You climb up the stairs.", depth=(7, 6)), _m("You fall through a trap door!", depth=(7, 9))),
    ],
    "discoverer": [
        (_m("You kill the newt!", level=(1, 2)), _m("You descend the stairs.", depth=(1, 2))),
        (_m("You find a hidden door.", depth=(3, 3)), _m("You climb up the stairs.", depth=(3, 2))),
        (_m("You see here 23 gold pieces.", gold=(0, 23)), _m("You fall through a trap door!", depth=(2, 3))),
        (_m("f - a scroll labeled ZELGO MER.", previous_message="You see here a scroll labeled ZELGO MER."),
         _m("You descend the stairs.", depth=(2, 3))),
        (_m("You kill the jackal!", hp=(14, 11), level=(2, 3)), _m("You climb up the stairs.", depth=(4, 3))),
    ],
    "worshipper": [
        (_m("There is a black flash as the ring hits the altar.",
            previous_message="There is an altar to Huan Ti (neutral) here."),
         _m("You kill the newt!")),
        (_m("There is an amber flash as the potion hits the altar."), _m("You descend the stairs.", depth=(2, 3))),
        (_m("There is an altar to Huan Ti (neutral) here.", previous_message="You enter a temple."),
         _m("You hear some noises in the distance.")),
        (_m("You drop 3 daggers. The daggers land on the altar."),
         _m("You feel that Huan Ti is displeased.")),
        (_m("There is an amber flash as the scroll hits the altar."),
         _m("Suddenly, a bolt of lightning strikes you!", hp=(14, 3))),
    ],
    "merchant": [
        (_m("Asidonhopo offers 10 gold pieces for your potion. Sell it? [ynaq] (y)"), _m("You kill the newt!")),
        (_m("You sold a scroll labeled READ ME for 40 gold pieces.", gold=(12, 52)),
         _m("You descend the stairs.", depth=(2, 3))),
        (_m("Hello, agent! Welcome to Asidonhopo's general store!"),
         _m("You hear the footsteps of a guard on patrol.")),
        (_m("Asidonhopo offers 5 gold pieces for your dagger. Sell it? [ynaq] (y)"),
         _m("You stole 20 zorkmids worth of merchandise.")),
        (_m("You sold a ring for 75 gold pieces.", gold=(3, 78)), _m("You climb up the stairs.", depth=(3, 2))),
    ],
}


def obvious_pairs(skill: str) -> list[CaptionPair]:
    """The skill's five obvious pairs, the better caption first."""
    return [CaptionPair(skill, good.caption(), bad.caption()) for good, bad in OBVIOUS_PAIRS[skill]]


def seed_captions() -> list[Caption]:
    """Every moment of the obvious pairs, unlabelled: descents, ascents, kills, gold, hidden
    doors, altars, shops, the god's anger. A run adds them to its pair pool at the start
    (`annotator.seed_moments`) because the agent's first games almost never show them (of
    8,054 captions of a 10-minute local run, 28 descents, one ascent, no altar or shop);
    the LLM labels them like any other caption."""
    unique = {}
    for pairs in OBVIOUS_PAIRS.values():
        for moment in (m for pair in pairs for m in pair):
            caption = moment.caption()
            unique.setdefault(caption.text, caption)
    return list(unique.values())


# Everyday messages for synthetic caption streams.
_MESSAGES = [
    "", "You kill the newt!", "You hit the jackal.", "The grid bug bites!", "You miss the sewer rat.",
    "You descend the stairs.", "You climb up the stairs.", "You see here 7 gold pieces.",
    "You find a hidden passage.", "It's a wall.", "You hear some noises in the distance.",
    "There is a staircase down here.", "There is a staircase up here.", "You are beginning to feel hungry.",
    "The shopkeeper offers 10 gold pieces for your potion. Sell it? [ynaq] (y)",
    "Hello, agent! Welcome to Asidonhopo's general store!", "There is an altar to Huan Ti (neutral) here.",
    "There is a black flash as the ring hits the altar.", "You fall through a trap door!",
    "You feel that Huan Ti is displeased.", "g - a blessed +2 ring mail.", "You hear a door open.",
    "Welcome to experience level 2.", "The kitten misses the newt.", "You see here a lichen corpse.",
]


def synthetic_moments(n: int, seed: int = 0) -> list[Moment]:
    """`n` plausible moments: common messages with small random stat changes."""
    rng = random.Random(seed)
    moments = []
    for _ in range(n):
        message = rng.choice(_MESSAGES)
        depth = rng.randint(1, 6)
        if "descend" in message or "trap door" in message:
            d2 = depth + 1
        elif "climb up" in message:
            d2 = max(1, depth - 1)
        else:
            d2 = depth
        gold = rng.choice([0, 0, 5, 30, 120])
        hp = rng.randint(6, 14)
        moments.append(Moment(
            message=message,
            previous_message=rng.choice(_MESSAGES),
            depth=(depth, d2),
            gold=(gold, gold + rng.choice([0, 0, 0, 7, 40])),
            hp=(hp, max(1, hp + rng.choice([0, 0, -2, 1]))),
            level=(1, rng.choice([1, 1, 1, 2])),
            hunger=("Normal", rng.choice(["Normal", "Normal", "Hungry"])),
        ))
    return moments


def synthetic_pairs(skills: list[str], n_pairs: int, n_captions: int, seed: int = 0) -> list[CaptionPair]:
    """`n_pairs` random pairs drawn from a pool of `n_captions` captions (so captions repeat)."""
    rng = random.Random(seed)
    pool = [m.caption() for m in synthetic_moments(n_captions, seed)]
    pairs = []
    for _ in range(n_pairs):
        first, second = rng.sample(pool, 2)
        pairs.append(CaptionPair(rng.choice(skills), first, second))
    return pairs
