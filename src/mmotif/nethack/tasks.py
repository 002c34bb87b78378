"""The paper's nine evaluation tasks as data, with per-episode success trackers (spec §10-§12, §15.2).

Each :class:`Task` carries its instruction (our words, the meaning of the paper's), the
initial values of its policy over skills (§10.2), its kind, the paper's result (§11, mean ±
standard error over 9 seeds) and the policy attributes the environment keeps up to date for
it (§12.1 item 5).

A :class:`TaskTracker` watches one episode, step by step, and computes **two** verdicts:

* ``proxy``: the reference evaluator's test (§10.2), e.g. "depth 7 reached" for Delphi;
* ``exact``: what the instruction really asks (§15.2), e.g. "the Oracle level reached".

Interaction tasks have no success, only counts per episode (sales, price identifications,
altar drops), again in a proxy and an exact flavour.

How the exact level checks read the game (no keys, no turns, no prompts)
------------------------------------------------------------------------
NetHack decides at game start on which level of which dungeon the Oracle and Minetown lie,
and keeps that in its own data: ``dungeon_topology.d_oracle_level`` and the special-level
chain ``sp_levchn`` (``minetn``), and the hero's level in ``u.uz``. NLE runs NetHack as a
shared library loaded from a per-game in-memory file (``Nethack.dlpath``) that exports these
symbols. :class:`DungeonProbe` opens that *already loaded* library with ``RTLD_NOLOAD``
(never a second copy), reads the few bytes it needs with ``ctypes`` and closes its handle
again at once (NLE re-opens the library at every reset and refuses to start if a stale
handle keeps it loaded, so no handle is ever held between calls). Nothing is sent to the
game: no turn passes, no prompt is touched, the RNG is not advanced.

``#overview`` was rejected: it is a free action, but it needs keys while no prompt is
pending, and it only names the Oracle once the hero has *entered* the Delphi room (and never
names Minetown). The glyph evidence (the Oracle ``@`` or centaur statues in view; an altar,
priest, shopkeeper or watchman on a Mines level) is tracked as well and used as the exact
check when the probe is unavailable (``exact_method`` says which one decided); it can only
fire once the hero *sees* those things, so it undercounts.

What the trackers see
---------------------
``observe(env, action)`` is the SkillEnv task hook (called after every action, before the
skill machinery); ``start(game)`` / ``step(game, action)`` do the work on a bare
:class:`~mmotif.nethack.game.NetHackGame` (tests drive them directly). One message per
step is seen: the game layer skips ``--More--`` and keeps only the stair messages through
it (§15.1), so e.g. a kill message followed by ``--More--`` is missed, as in the reference.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np
from nle import nethack as _nh

from mmotif.nethack import actions as A
from mmotif.nethack.features import BL_DEPTH, BL_DNUM, BL_GOLD, BL_HUNGER, BL_X, BL_XL, BL_Y, MINES_DNUM

__all__ = [
    "DungeonProbe",
    "PaperResult",
    "TASKS",
    "Task",
    "TaskTracker",
    "get_task",
    "load_task_policy",
    "price_identifies",
    "reference_policy_source",
    "task_names",
    "task_policy",
]

Kind = Literal["navigation", "interaction", "composite"]

# NetHack facts used by the checks ------------------------------------------------------
HUNGRY = 2                     # u.uhs: 0 satiated, 1 not hungry, 2 hungry, 3 weak, 4 fainting
ORACLE_PROXY_DEPTH = 7         # the reference's "Level 7" overview test (§10.2)
SURVIVE_AFTER_SALE = 300       # Level Up & Sell: env steps to survive after the sale
GOLDEN_KILLS, GOLDEN_GOLD, GOLDEN_DEPTH = 25, 20, 3
LEVELUP_XL = 4

_CMAP = _nh.GLYPH_CMAP_OFF
S_UPSTAIR, S_ALTAR, S_FOUNTAIN = 23, 27, 31
_MONS = {_nh.permonst(i).mname: i for i in range(_nh.NUMMONS)}
ORACLE_GLYPHS = np.array([_nh.GLYPH_MON_OFF + _MONS["Oracle"]], np.int16)
CENTAUR_STATUES = np.array([_nh.GLYPH_STATUE_OFF + _MONS[n]
                            for n in ("plains centaur", "forest centaur", "mountain centaur")], np.int16)
MINETOWN_GLYPHS = np.array(
    [_CMAP + S_ALTAR] + [_nh.GLYPH_MON_OFF + _MONS[n]
                         for n in ("aligned priest", "shopkeeper", "watchman", "watch captain")],
    np.int16,
)

# Messages ------------------------------------------------------------------------------
_SALE = re.compile(rb"You sold .+? for \d+ gold pieces?")
# "<shk> offers <n> gold pieces for your <item>.  Sell it?" ("offers only" = short of funds,
# "Sell them?" = a stack whose count the text does not give: neither identifies a price)
_OFFER = re.compile(rb"offers (\d+) gold pieces? for (?:your |the )?(.+?)\.\s+Sell (it|them)\?")
_ALTAR_DROP = re.compile(rb"lands? on the altar|flash as .+? hits? the altar")
_OWN_KILL = re.compile(rb"\bYou (?:kill|destroy) ")
_LEAVE_PROMPT = b"Still climb?"

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


# ---------------------------------------------------------------------------------------
# Task data
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaperResult:
    """MaestroMotif's zero-shot result in the paper (mean ± s.e. over 9 seeds)."""

    mean: float
    se: float
    unit: Literal["rate", "count"]

    def format(self) -> str:
        if self.unit == "rate":
            return f"{100 * self.mean:.2f}% ± {100 * self.se:.2f}%"
        return f"{self.mean:.2f} ± {self.se:.2f}"


@dataclass(frozen=True)
class Task:
    name: str                              # id used on the command line and in file names
    title: str
    kind: Kind
    instruction: str                       # the task for the coder LLM (our words)
    hints: tuple[str, ...]                 # dungeon-layout hints that go with it (§12.1)
    initial_values: Mapping[str, int]      # max_depth, discoverer_skill_steps (§10.2)
    paper: PaperResult
    metric: str                            # "success", or the count reported for interaction tasks
    proxy_rule: str
    exact_rule: str
    attributes: Mapping[str, str] = field(default_factory=dict)   # env-kept policy attributes

    @property
    def counts_events(self) -> bool:
        return self.kind == "interaction"

    def tracker(self, probe: bool = True) -> TaskTracker:
        return TaskTracker(self, probe=probe)


def _values(max_depth: int, discoverer: int) -> Mapping[str, int]:
    return MappingProxyType({"max_depth": max_depth, "discoverer_skill_steps": discoverer})


_MINES_HINT = ("The Dungeons of Doom are branch 0. On one of the levels 2 to 4 (branch_depth) a "
               "second down staircase leads to the Gnomish Mines (branch 2), whose first level is "
               "branch_depth + 1; from branch_depth a descent lands in either branch with "
               "probability 0.5, since the two staircases cannot be told apart.")

TASKS: Mapping[str, Task] = MappingProxyType({t.name: t for t in (
    Task(
        name="gnomish", title="Gnomish Mines", kind="navigation",
        instruction="Get the player into the Gnomish Mines.",
        hints=(_MINES_HINT,),
        initial_values=_values(5, 500), paper=PaperResult(0.46, 0.017, "rate"), metric="success",
        proxy_rule="the hero is in dungeon number 2 (the Mines) at any step",
        exact_rule="the same: dungeon number 2 is the Gnomish Mines",
    ),
    Task(
        name="delphi", title="Delphi", kind="navigation",
        instruction=("Reach the Oracle's level (Delphi) in the Dungeons of Doom as quickly as "
                     "possible: do not explore the first levels and do not go into the Gnomish Mines."),
        hints=(_MINES_HINT, "The Oracle is in the Dungeons of Doom, on a level between 5 and 9."),
        initial_values=_values(10, 50), paper=PaperResult(0.29, 0.012, "rate"), metric="success",
        proxy_rule=f"dungeon level {ORACLE_PROXY_DEPTH} or deeper reached (the reference's 'Level 7')",
        exact_rule="the hero stands on the Oracle level (NetHack's own dungeon data)",
    ),
    Task(
        name="minetown", title="Minetown", kind="navigation",
        instruction=("Enter the Gnomish Mines and then go straight down to Minetown without "
                     "exploring on the way."),
        hints=(_MINES_HINT, "Minetown lies in the Gnomish Mines, 3 or 4 levels below the branch, "
                            "at most at depth 8."),
        initial_values=_values(5, 50), paper=PaperResult(0.072, 0.005, "rate"), metric="success",
        proxy_rule="the third Mines level reached while the Mines start at depth 2, 3 or 4 "
                   "(the reference's overview strings)",
        exact_rule="the hero stands on the Minetown level (NetHack's own dungeon data)",
    ),
    Task(
        name="transactions", title="Transactions", kind="interaction",
        instruction="Find a shopkeeper and sell items to them successfully.",
        hints=(_MINES_HINT, "Shopkeepers are found mostly in the Dungeons of Doom, never on "
                            "dungeon level 1."),
        initial_values=_values(5, 500), paper=PaperResult(0.66, 0.01, "count"), metric="sales",
        proxy_rule="steps whose message contains 'sold'",
        exact_rule="'You sold <item> for <n> gold' messages",
    ),
    Task(
        name="price", title="Price Identified", kind="interaction",
        instruction=("Find a shopkeeper and offer items for sale, so that the price they offer "
                     "identifies what the items are."),
        hints=(_MINES_HINT, "Shopkeepers are found mostly in the Dungeons of Doom, never on "
                            "dungeon level 1."),
        initial_values=_values(5, 500), paper=PaperResult(0.47, 0.01, "count"),
        metric="price_identified",
        proxy_rule="a sale right after an offer whose doubled price is a base-price tier of the "
                   "item's class (the reference's rule)",
        exact_rule="distinct unidentified items offered at a price that maps back (x1/2, or x3/8 "
                   "from a suspicious shopkeeper, per unit) to a base-price tier of their class",
    ),
    Task(
        name="buc", title="BUC Identified", kind="interaction",
        instruction=("Find an altar and drop items on it to learn whether they are blessed, "
                     "uncursed or cursed."),
        hints=(_MINES_HINT, "Altars can be found from dungeon level 1 on."),
        initial_values=_values(5, 500), paper=PaperResult(1.60, 0.01, "count"),
        metric="altar_drops",
        proxy_rule="DROP steps whose message mentions the altar but neither 'cursed' nor 'blessed'",
        exact_rule="DROP steps answered by the altar ('lands on the altar' or a flash)",
    ),
    Task(
        name="goldenexit", title="Golden Exit", kind="composite",
        instruction=(f"Move between the first three levels of the Dungeons of Doom, going down to "
                     f"level 3 at least once, until you hold at least {GOLDEN_GOLD} gold pieces "
                     f"and have defeated {GOLDEN_KILLS} monsters; then leave the dungeon by the up "
                     f"staircase of level 1."),
        hints=(_MINES_HINT, "Taking the up staircase on dungeon level 1 asks whether to leave the "
                            "dungeon; that is the exit."),
        initial_values=_values(3, 500), paper=PaperResult(0.248, 0.0118, "rate"), metric="success",
        proxy_rule=f"with ≥{GOLDEN_KILLS} 'kill'/'destroy' messages, gold ≥{GOLDEN_GOLD} and depth "
                   f"{GOLDEN_DEPTH} reached, the leave prompt on DL1 appears",
        exact_rule=f"the same with the hero's own kills ('You kill/destroy'), DL{GOLDEN_DEPTH} of the "
                   f"Dungeons of Doom reached",
        attributes=MappingProxyType({
            "gold_pieces": "gold the hero holds now (int)",
            "monsters_defeated": "monsters the hero has killed this episode (int)",
        }),
    ),
    Task(
        name="levelupsell", title="Level Up & Sell", kind="composite",
        instruction=(f"Stay on the first dungeon level until the player reaches experience level "
                     f"{LEVELUP_XL}; then find a shopkeeper and sell an item; then stay alive for "
                     f"{SURVIVE_AFTER_SALE} more steps."),
        hints=(_MINES_HINT, "Shopkeepers are found mostly in the Dungeons of Doom, never on "
                            "dungeon level 1."),
        initial_values=_values(5, 500), paper=PaperResult(0.0709, 0.0099, "rate"), metric="success",
        proxy_rule=f"a 'sold' message, then {SURVIVE_AFTER_SALE} more steps alive (XL and DL1 unchecked)",
        exact_rule=f"XL ≥{LEVELUP_XL} reached before ever leaving DL1, then a real sale, then "
                   f"{SURVIVE_AFTER_SALE} more steps alive",
        attributes=MappingProxyType({
            "xp_level": "the hero's experience level (int)",
            "items_sold": "items sold this episode (int)",
        }),
    ),
    Task(
        name="discoveryhunger", title="Discovery Hunger", kind="composite",
        instruction=("Find the Gnomish Mines and, once the player is hungry, eat there; only "
                     "after that, go to the Oracle's level in the Dungeons of Doom."),
        hints=(_MINES_HINT, "The Oracle is in the Dungeons of Doom, on a level between 5 and 9.",
               "Eating is done by the Discoverer skill when the player is hungry."),
        initial_values=_values(10, 500), paper=PaperResult(0.0791, 0.0147, "rate"), metric="success",
        proxy_rule=f"an eat step in the Mines, then arrival at depth ≥{ORACLE_PROXY_DEPTH}",
        exact_rule="an eat step in the Mines while Hungry (or worse), then the Oracle level",
        attributes=MappingProxyType({
            "eaten_food": "the player has eaten in the Gnomish Mines while hungry (bool)",
            "hungry": "the player is hungry now (bool)",
        }),
    ),
)})

_ALIASES = {
    "mines": "gnomish", "gnomish mines": "gnomish", "oracle": "delphi",
    "price identified": "price", "buc identified": "buc", "golden exit": "goldenexit",
    "level up & sell": "levelupsell", "level up and sell": "levelupsell",
    "discovery hunger": "discoveryhunger",
}


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def get_task(name: str) -> Task:
    """A task by id (`delphi`), title (`Golden Exit`) or alias, case-insensitive."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    for task in TASKS.values():
        if key in (task.name, task.title.lower()):
            return task
    raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}")


# ---------------------------------------------------------------------------------------
# Reading NetHack's dungeon data
# ---------------------------------------------------------------------------------------
class DungeonProbe:
    """Reads the Oracle/Minetown levels and the hero's level from the running game's library.

    Every read opens the already-loaded library with ``RTLD_NOLOAD`` and closes it before
    returning (see the module docstring). Any failure makes the probe unavailable
    (``available`` False, ``error`` says why); it never raises into the game loop. The
    struct offsets are those of NetHack 3.6.6 in the NLE versions in TESTED_NLE; with any
    other NLE the probe stays off and the exact checks use the glyph evidence.
    """

    TESTED_NLE = ("1.3.",)

    # struct you { xchar ux, uy; schar dx, dy, dz, di; xchar tx, ty, ux0, uy0; d_level uz; ... }
    U_UZ_OFFSET = 10
    # struct s_level { struct s_level *next; d_level dlevel; char proto[15]; ... }
    SLEV_DLEVEL_OFFSET = ctypes.sizeof(ctypes.c_void_p)
    SLEV_PROTO_OFFSET = SLEV_DLEVEL_OFFSET + 2

    def __init__(self, game):
        import nle

        self.path = getattr(getattr(game, "_nh", None), "dlpath", None)
        self.available = self.path is not None and hasattr(os, "RTLD_NOLOAD")
        self.error = "" if self.available else "no NLE library path on this game"
        version = getattr(nle, "__version__", "?")
        if self.available and not version.startswith(self.TESTED_NLE):
            self.available = False
            self.error = f"NLE {version} is not a version whose NetHack data layout was checked"

    def _read(self, reader):
        if not self.available:
            return None
        lib = None
        try:
            lib = ctypes.CDLL(self.path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            return reader(lib)
        except (OSError, ValueError, AttributeError) as err:
            self.available = False
            self.error = f"{type(err).__name__}: {err}"
            return None
        finally:
            if lib is not None:
                import _ctypes
                _ctypes.dlclose(lib._handle)

    def special_levels(self) -> dict[str, tuple[int, int]]:
        """{proto name: (dnum, dlevel)} of the special levels, plus 'oracle' from the topology."""
        def reader(lib):
            out = {}
            node = ctypes.c_void_p.in_dll(lib, "sp_levchn").value
            for _ in range(256):
                if not node:
                    break
                raw = ctypes.string_at(node + self.SLEV_DLEVEL_OFFSET, 2 + 15)
                proto = raw[2:].split(b"\0", 1)[0].decode("latin-1")
                out[proto] = (ctypes.c_int8.from_buffer_copy(raw, 0).value,
                              ctypes.c_int8.from_buffer_copy(raw, 1).value)
                node = ctypes.c_void_p.from_address(node).value
            topo = (ctypes.c_int8 * 2).in_dll(lib, "dungeon_topology")
            out["oracle"] = (topo[0], topo[1])   # d_oracle_level is the first field
            return out
        return self._read(reader) or {}

    def hero_level(self) -> tuple[int, int] | None:
        """(dnum, dlevel) of the hero (u.uz)."""
        def reader(lib):
            raw = (ctypes.c_int8 * 2).from_address(
                ctypes.addressof(ctypes.c_int8.in_dll(lib, "u")) + self.U_UZ_OFFSET)
            return raw[0], raw[1]
        return self._read(reader)


# ---------------------------------------------------------------------------------------
# Price identification
# ---------------------------------------------------------------------------------------
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


_REFERENCE_TIERS = {            # the reference evaluator's table (rl_baseline/price_id.py)
    "potion": {50, 100, 150, 200, 250, 300}, "scroll": {20, 50, 60, 80, 100, 200, 300},
    "ring": {100, 150, 200, 300}, "cloak": {50, 60}, "boots": {8, 30, 50},
    "wand": {100, 150, 175, 200, 500}, "helmet": {10, 50},
}


def _reference_price_id(offer_message: bytes) -> bool:
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
    return price * 2 in _REFERENCE_TIERS.get(cls, ())


# ---------------------------------------------------------------------------------------
# The tracker
# ---------------------------------------------------------------------------------------
class TaskTracker:
    """Proxy and exact success (or counts) of one task over one episode.

    Use as the SkillEnv task hook (`SkillEnv(..., task=tracker)`), or drive it directly
    with `start(game)` then `step(game, action)` after every action. `finished` says that
    every success check of a navigation/composite task has fired (the episode may end);
    interaction tasks never finish early. `result()` is a JSON-able summary.
    """

    def __init__(self, task: Task | str, probe: bool = True):
        self.task = get_task(task) if isinstance(task, str) else task
        self.use_probe = probe
        self._wired: dict[str, object] = {}
        self.probe: DungeonProbe | None = None

    # -- SkillEnv hook -------------------------------------------------------------------
    def begin(self, env) -> None:
        self.start(env.game)
        self._wired = {}
        self.wire(env.policy)

    def observe(self, env, action: int) -> None:
        self.step(env.game, action)
        self.wire(env.policy)

    def wire(self, policy) -> None:
        """Push the task's env-kept attributes into the policy (only values that changed)."""
        if not self.task.attributes or policy is None:
            return
        for name, value in self.attribute_values().items():
            if self._wired.get(name, object()) != value:
                policy.set_attribute(name, value)
                self._wired[name] = value

    def attribute_values(self) -> dict[str, object]:
        values = {
            "gold_pieces": self.gold, "monsters_defeated": self.kills_exact,
            "xp_level": self.xl, "items_sold": self.sales_exact,
            "eaten_food": self.ate_hungry_in_mines, "hungry": self.hunger >= HUNGRY,
        }
        return {name: values[name] for name in self.task.attributes}

    # -- episode ---------------------------------------------------------------------------
    def start(self, game) -> None:
        bl = game.blstats.tolist()
        self.steps = 0
        self.depth, self.dnum = bl[BL_DEPTH], bl[BL_DNUM]
        self.x, self.y = bl[BL_X], bl[BL_Y]
        self.gold, self.xl, self.hunger = bl[BL_GOLD], bl[BL_XL], bl[BL_HUNGER]
        self.deepest = self.deepest_dod = self.depth
        self.mines_start: int | None = None
        self.mines_deepest = 0
        self.left_dl1 = not (self.depth == 1 and self.dnum == 0)
        self.xl4_on_dl1 = self.xl >= LEVELUP_XL and not self.left_dl1
        self.sales_proxy = self.sales_exact = 0
        self.offers = 0
        self.price_id_proxy = 0
        self._price_items: set[str] = set()
        self.altar_drops_proxy = self.altar_drops_exact = 0
        self.kills_proxy = self.kills_exact = 0
        self.ate_in_mines = self.ate_hungry_in_mines = False
        self.leave_attempts = 0
        self.on_oracle = self.oracle_seen = False          # ever (this episode)
        self.on_minetown = self.minetown_seen = False
        self.at_oracle = self.oracle_seen_here = False     # the current level
        self._last_offer = b""
        self._proxy_sale_step: int | None = None
        self._exact_sale_step: int | None = None
        self.proxy: bool | None = None if self.task.counts_events else False
        self.exact: bool | None = None if self.task.counts_events else False
        self.proxy_step: int | None = None
        self.exact_step: int | None = None
        self.events: list[tuple[int, str]] = []
        self.game_over = False
        self.special: dict[str, tuple[int, int]] = {}
        self.probe = None
        if self.use_probe:
            self.probe = DungeonProbe(game)
            self.special = self.probe.special_levels()
            if "oracle" not in self.special or "minetn" not in self.special:
                self.probe.available = False
                self.probe.error = self.probe.error or "special levels not found"
        self._arrive(game, first=True)

    @property
    def exact_method(self) -> str:
        if self.task.name in ("delphi", "minetown", "discoveryhunger"):
            return "dungeon data" if self.probe is not None and self.probe.available else "glyphs"
        return "messages and status"

    @property
    def price_id_exact(self) -> int:
        return len(self._price_items)

    @property
    def finished(self) -> bool:
        return bool(not self.task.counts_events and self.proxy and self.exact)

    def step(self, game, action: int) -> None:
        """Account for one played action; `game` shows the state after it."""
        bl = game.blstats.tolist()
        prev_depth, prev_dnum, prev_hunger = self.depth, self.dnum, self.hunger
        self.steps += 1
        self.game_over = bool(getattr(game, "done", False))
        self.depth, self.dnum = bl[BL_DEPTH], bl[BL_DNUM]
        self.x, self.y = bl[BL_X], bl[BL_Y]
        self.gold, self.xl, self.hunger = bl[BL_GOLD], bl[BL_XL], bl[BL_HUNGER]
        msg = game.message_bytes()
        changed = (self.depth, self.dnum) != (prev_depth, prev_dnum)
        if changed:
            self._arrive(game)
        if self.dnum != 0 or self.depth != 1:
            self.left_dl1 = True
        if self.xl >= LEVELUP_XL and not self.left_dl1 and not self.xl4_on_dl1:
            self.xl4_on_dl1 = True
            self._event("XL 4 on DL1")
        self._glyph_evidence(game)
        self._messages(msg, action, getattr(game, "just_ate", False), prev_hunger)
        self._judge(msg, changed)

    # -- internals -------------------------------------------------------------------------
    def _event(self, what: str) -> None:
        self.events.append((self.steps, what))

    def _arrive(self, game, first: bool = False) -> None:
        depth, dnum = self.depth, self.dnum
        self.deepest = max(self.deepest, depth)
        if dnum == 0:
            self.deepest_dod = max(self.deepest_dod, depth)
        self.at_oracle = self.oracle_seen_here = False
        if dnum == MINES_DNUM:
            if self.mines_start is None:
                self._event(f"entered the Gnomish Mines at depth {depth}")
            self.mines_start = depth if self.mines_start is None else min(self.mines_start, depth)
            self.mines_deepest = max(self.mines_deepest, depth)
        if self.probe is None or not self.probe.available or self.game_over:
            return
        oracle, minetown = self.special.get("oracle"), self.special.get("minetn")
        here = (dnum, depth) if dnum == 0 else None     # Dungeons of Doom: dlevel == depth
        if here is None:
            here = self.probe.hero_level()
            if here is None:
                return
            if here[0] != dnum:                          # layout check against blstats
                self.probe.available = False
                self.probe.error = f"u.uz {here} disagrees with blstats dnum {dnum}"
                return
        self.at_oracle = here == oracle
        if self.at_oracle and not self.on_oracle:
            self.on_oracle = True
            self._event(f"on the Oracle level (depth {depth})")
        if here == minetown and not self.on_minetown:
            self.on_minetown = True
            self._event(f"on the Minetown level (depth {depth})")

    def _glyph_evidence(self, game) -> None:
        if self.dnum == 0 and 5 <= self.depth <= 9 and not self.oracle_seen_here:
            glyphs = game.glyphs
            if np.isin(glyphs, ORACLE_GLYPHS).any() or np.isin(glyphs, CENTAUR_STATUES).any():
                if not self.oracle_seen:
                    self._event("Oracle or centaur statues in view")
                self.oracle_seen = self.oracle_seen_here = True
        if self.dnum == MINES_DNUM and not self.minetown_seen:
            if np.isin(game.glyphs, MINETOWN_GLYPHS).any():
                self.minetown_seen = True
                self._event("temple/shop/watch in view in the Mines")

    def _messages(self, msg: bytes, action: int, just_ate: bool, prev_hunger: int) -> None:
        if b"sold" in msg:
            self.sales_proxy += 1
            if self._last_offer and _reference_price_id(self._last_offer):
                self.price_id_proxy += 1
        sales = len(_SALE.findall(msg))
        if sales:
            self.sales_exact += sales
            self._event(f"sale: {msg.decode('latin-1')[:80]}")
        offer = _OFFER.search(msg)
        self._last_offer = msg if offer else b""
        if offer:
            self.offers += 1
            item = offer.group(2).decode("latin-1")
            single = offer.group(3) == b"it"
            if single and item not in self._price_items and price_identifies(int(offer.group(1)), item):
                self._price_items.add(item)
                self._event(f"price identified: {item}")
        if action == A.INDEX["DROP"]:
            if b"altar" in msg and b"cursed" not in msg and b"blessed" not in msg:
                self.altar_drops_proxy += 1
            if _ALTAR_DROP.search(msg):
                self.altar_drops_exact += 1
                self._event("drop on an altar")
        if b"kill" in msg or b"destroy" in msg:
            self.kills_proxy += 1
        self.kills_exact += len(_OWN_KILL.findall(msg))
        if just_ate and self.dnum == MINES_DNUM:
            if not self.ate_in_mines:
                self._event("ate in the Mines")
            self.ate_in_mines = True
            if prev_hunger >= HUNGRY and not self.ate_hungry_in_mines:
                self.ate_hungry_in_mines = True
                self._event("ate in the Mines while hungry")
        if _LEAVE_PROMPT in msg:
            self.leave_attempts += 1
            self._event("tried to leave the dungeon")

    def _succeed(self, which: str) -> None:
        if which == "proxy" and not self.proxy:
            self.proxy, self.proxy_step = True, self.steps
            self._event("proxy success")
        elif which == "exact" and not self.exact:
            self.exact, self.exact_step = True, self.steps
            self._event("exact success")

    def _exact_oracle(self, here: bool = False) -> bool:
        """The Oracle level reached (ever, or `here`: the current level is it)."""
        if self.probe is not None and self.probe.available:
            return self.at_oracle if here else self.on_oracle
        return self.oracle_seen_here if here else self.oracle_seen

    def _exact_minetown(self) -> bool:
        if self.probe is not None and self.probe.available:
            return self.on_minetown
        return self.minetown_seen

    def _judge(self, msg: bytes, changed: bool) -> None:
        name = self.task.name
        if name == "gnomish":
            if self.mines_start is not None:
                self._succeed("proxy")
                self._succeed("exact")
        elif name == "delphi":
            if self.deepest >= ORACLE_PROXY_DEPTH:
                self._succeed("proxy")
            if self._exact_oracle():
                self._succeed("exact")
        elif name == "minetown":
            if self.mines_start in (2, 3, 4) and self.mines_deepest >= self.mines_start + 2:
                self._succeed("proxy")
            if self._exact_minetown():
                self._succeed("exact")
        elif name == "goldenexit":
            if _LEAVE_PROMPT in msg and self.gold >= GOLDEN_GOLD:
                if self.kills_proxy >= GOLDEN_KILLS and self.deepest >= GOLDEN_DEPTH:
                    self._succeed("proxy")
                if self.kills_exact >= GOLDEN_KILLS and self.deepest_dod >= GOLDEN_DEPTH:
                    self._succeed("exact")
        elif name == "levelupsell":
            if self._proxy_sale_step is None and b"sold" in msg:
                self._proxy_sale_step = self.steps
            if self._exact_sale_step is None and self.xl4_on_dl1 and _SALE.search(msg):
                self._exact_sale_step = self.steps
            alive = not self.game_over
            if alive and self._proxy_sale_step is not None and \
                    self.steps - self._proxy_sale_step > SURVIVE_AFTER_SALE:
                self._succeed("proxy")
            if alive and self._exact_sale_step is not None and \
                    self.steps - self._exact_sale_step > SURVIVE_AFTER_SALE:
                self._succeed("exact")
        elif name == "discoveryhunger":
            if self.ate_in_mines and changed and self.depth >= ORACLE_PROXY_DEPTH:
                self._succeed("proxy")
            if self.ate_hungry_in_mines and self._exact_oracle(here=True):   # arrived after eating
                self._succeed("exact")
        # interaction tasks: counts only

    def counts(self) -> dict[str, int]:
        """Per-episode counts, proxy and exact."""
        return {
            "sales_proxy": self.sales_proxy, "sales": self.sales_exact,
            "offers": self.offers,
            "price_identified_proxy": self.price_id_proxy, "price_identified": self.price_id_exact,
            "altar_drops_proxy": self.altar_drops_proxy, "altar_drops": self.altar_drops_exact,
            "kills_proxy": self.kills_proxy, "kills": self.kills_exact,
            "leave_attempts": self.leave_attempts,
        }

    def metric_values(self) -> tuple[float, float]:
        """(proxy, exact) value of the task's headline metric for this episode."""
        if self.task.counts_events:
            c = self.counts()
            return float(c[f"{self.task.metric}_proxy"]), float(c[self.task.metric])
        return float(bool(self.proxy)), float(bool(self.exact))

    def result(self) -> dict:
        proxy, exact = self.metric_values()
        return {
            "task": self.task.name,
            "steps": self.steps,
            "proxy": proxy,
            "exact": exact,
            "proxy_step": self.proxy_step,
            "exact_step": self.exact_step,
            "exact_method": self.exact_method,
            "probe_error": self.probe.error if self.probe is not None else "probe off",
            "deepest": self.deepest,
            "entered_mines": self.mines_start is not None,
            "on_oracle": self.on_oracle, "oracle_seen": self.oracle_seen,
            "on_minetown": self.on_minetown, "minetown_seen": self.minetown_seen,
            "ate_in_mines": self.ate_in_mines, "ate_hungry_in_mines": self.ate_hungry_in_mines,
            "xl4_on_dl1": self.xl4_on_dl1,
            "counts": self.counts(),
            "events": [f"{s}: {e}" for s, e in self.events[:50]],
        }


# ---------------------------------------------------------------------------------------
# Reference policies (skills/builtin/tasks/<task>.py)
# ---------------------------------------------------------------------------------------
def _reference_parts(task: Task) -> list[tuple[str, str]]:
    from mmotif.skills.code_policy import builtin_source

    return [
        ("builtin/exploration.py", builtin_source("exploration")),
        ("builtin/initiation_termination.py", builtin_source("initiation_termination")),
        (f"builtin/tasks/{task.name}.py", builtin_source(f"tasks/{task.name}")),
    ]


def reference_policy_source(task: Task | str) -> str:
    """The shipped reference policy of `task` as one source (usable by CodePolicy.from_source)."""
    from mmotif.skills.code_policy import combine_parts

    task = get_task(task) if isinstance(task, str) else task
    source, _ = combine_parts(_reference_parts(task))
    return source


def _skill_lists(skills) -> tuple[Sequence[str], Sequence[str] | None]:
    if skills is None:
        from mmotif.skills.specs import SkillSet
        skills = SkillSet()
    if hasattr(skills, "names"):
        return skills.names, skills.with_precondition()
    return tuple(skills), None


def task_policy(task: Task | str, skills=None, seed: int | None = None, **kwargs):
    """The shipped reference code policy of `task` (§12.2): the built-in exploration class,
    the initiation/termination functions and the task's own fragment, dry-run checked."""
    from mmotif.skills.code_policy import CodePolicy

    task = get_task(task) if isinstance(task, str) else task
    names, pre = _skill_lists(skills)
    kwargs.setdefault("name", f"reference:{task.name}")
    return CodePolicy.from_parts(_reference_parts(task), names, pre, seed=seed, **kwargs)


def load_task_policy(task: Task | str, path=None, skills=None, seed: int | None = None, **kwargs):
    """A policy file written by `mmotif plan` (or any complete NetHackPlayer source), or the
    reference policy when `path` is None."""
    from pathlib import Path

    from mmotif.skills.code_policy import CodePolicy

    if path is None:
        return task_policy(task, skills, seed, **kwargs)
    names, pre = _skill_lists(skills)
    source = Path(path).read_text()
    kwargs.setdefault("name", str(path))
    return CodePolicy.from_source(source, names, pre, seed=seed, **kwargs)
