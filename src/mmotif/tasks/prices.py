"""Price identification: NetHack's base-price tiers and what a shopkeeper's offer reveals."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["PRICE_TIERS", "REFERENCE_TIERS", "price_identifies", "reference_price_id"]

# Base prices of the item groups whose appearance is randomised (NetHack 3.6 objects.c),
# per class: the tiers an offer can reveal. Armour groups are those with random appearances.
PRICE_TIERS: Mapping[str, frozenset[int]] = MappingProxyType({
    "potion": frozenset({50, 100, 150, 200, 250, 300}),
    "scroll": frozenset({20, 50, 60, 80, 100, 200, 300}),
    "ring": frozenset({100, 150, 200, 300}),
    "wand": frozenset({100, 150, 175, 200, 500}),
    "spellbook": frozenset({100, 200, 300, 400, 500, 600, 700}),
    "cloak": frozenset({50, 60}),
    "boots": frozenset({8, 30, 50}),
    "helmet": frozenset({10, 50}),
})
_CLOAK_LOOKS = ("tattered cape", "opera cloak", "ornamental cope", "piece of cloth")
_HELMET_LOOKS = ("plumed helmet", "etched helmet", "crested helmet", "visored helmet")
_BOOT_LOOKS = ("combat boots", "jungle boots", "hiking boots", "mud boots", "buckled boots",
               "riding boots", "snow boots")
_FORMALLY_KNOWN = re.compile(r"\b(?:potion|scroll|ring|wand|spellbook)s? of ")


def _item_class(item: str) -> str | None:
    words = item.lower()
    for cls in ("potion", "scroll", "spellbook", "wand"):
        if re.search(rf"\b{cls}s?\b", words):
            return cls
    if re.search(r"\brings?\b", words):
        return "ring"
    if any(look in words for look in _CLOAK_LOOKS):
        return "cloak"
    if any(look in words for look in _HELMET_LOOKS):
        return "helmet"
    if any(look in words for look in _BOOT_LOOKS):
        return "boots"
    return None


def _round_half_up(numerator: int, denominator: int) -> int:
    return (numerator * 10 // denominator + 5) // 10


def price_identifies(offer: int, item: str) -> tuple[str, tuple[int, ...]] | None:
    """(class, candidate base prices) when a sale offer pins `item` to price tiers, else None.

    NetHack offers half the base price per unit, or 3/8 of it from a shopkeeper who
    suspects the seller (for unidentified items), rounded as shk.c does. Items whose type
    is already formally known, and classes without random appearances, identify nothing.
    """
    text = item.strip()
    if _FORMALLY_KNOWN.search(text.lower()):
        return None
    cls = _item_class(text)
    if cls is None:
        return None
    m = re.match(r"(\d+) ", text)
    quantity = int(m.group(1)) if m else 1
    bases = tuple(sorted(
        base for base in PRICE_TIERS[cls]
        if offer in (_round_half_up(base * quantity, 2), _round_half_up(base * quantity * 3, 8))
    ))
    return (cls, bases) if bases else None


REFERENCE_TIERS = {            # the reference evaluator's table (rl_baseline/price_id.py)
    "potion": {50, 100, 150, 200, 250, 300}, "scroll": {20, 50, 60, 80, 100, 200, 300},
    "ring": {100, 150, 200, 300}, "cloak": {50, 60}, "boots": {8, 30, 50},
    "wand": {100, 150, 175, 200, 500}, "helmet": {10, 50},
}


def reference_price_id(offer_message: bytes) -> bool:
    """The reference's test: twice the number before 'gold' is a tier of the offered class."""
    words = offer_message.decode("latin-1").split()
    try:
        price = int(words[words.index("gold") - 1])
        if "scroll" in offer_message.decode("latin-1"):
            cls = words[words.index("your") + 1]
        else:
            cls = words[words.index("Sell") - 1].replace(".", "")
    except (ValueError, IndexError):
        return False
    return price * 2 in REFERENCE_TIERS.get(cls, ())

