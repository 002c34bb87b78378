"""The per-episode task tracker: what one episode did, and whether the task succeeded.

A :class:`TaskTracker` watches one episode, step by step, keeps the bookkeeping every task
reads (depths and branches reached, sales, offers, altar drops, kills, meals, special
levels) and asks the task's :class:`~mmotif.tasks.base.SuccessRule` for **two** verdicts:

* ``proxy``: the reference evaluator's test (§10.2), e.g. "depth 7 reached" for Delphi;
* ``exact``: what the instruction really asks (§15.2), e.g. "the Oracle level reached".

Interaction tasks have no success, only counts per episode (sales, price identifications,
altar drops), again in a proxy and an exact flavour.

The exact level checks read NetHack's own dungeon data (:class:`~mmotif.tasks.probe.DungeonProbe`:
no keys, no turns, no prompts). The glyph evidence (the Oracle ``@`` or centaur statues in
view; an altar, priest, shopkeeper or watchman on a Mines level) is tracked as well and used
as the exact check when the probe is unavailable (``exact_method`` says which one decided);
it can only fire once the hero *sees* those things, so it undercounts.

What the trackers see
---------------------
``observe(env, action)`` is the SkillEnv task hook (called after every action, before the
skill machinery); ``start(game)`` / ``step(game, action)`` do the work on a bare
:class:`~mmotif.nethack.game.NetHackGame` (tests drive them directly). One message per
step is seen: the game layer skips ``--More--`` and keeps only the stair messages through
it (§15.1), so e.g. a kill message followed by ``--More--`` is missed, as in the reference.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
from nle import nethack as _nh

from mmotif.nethack import actions as A
from mmotif.nethack.features import BL_DEPTH, BL_DNUM, BL_GOLD, BL_HUNGER, BL_X, BL_XL, BL_Y, MINES_DNUM
from mmotif.tasks.base import HUNGRY, LEVELUP_XL, Task
from mmotif.tasks.prices import price_identifies, reference_price_id
from mmotif.tasks.probe import DungeonProbe

__all__ = ["LEAVE_PROMPT", "SALE", "TaskTracker"]

# Glyphs ---------------------------------------------------------------------------------
_CMAP = _nh.GLYPH_CMAP_OFF
S_ALTAR = 27                   # the altar in the cmap glyphs
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
SALE = re.compile(rb"You sold .+? for \d+ gold pieces?")
# "<shk> offers <n> gold pieces for your <item>.  Sell it?" ("offers only" = short of funds,
# "Sell them?" = a stack whose count the text does not give: neither identifies a price)
_OFFER = re.compile(rb"offers (\d+) gold pieces? for (?:your |the )?(.+?)\.\s+Sell (it|them)\?")
_ALTAR_DROP = re.compile(rb"lands? on the altar|flash as .+? hits? the altar")
_OWN_KILL = re.compile(rb"\bYou (?:kill|destroy) ")
LEAVE_PROMPT = b"Still climb?"


class TaskTracker:
    """Proxy and exact success (or counts) of one task over one episode.

    Use as the SkillEnv task hook (`SkillEnv(..., task=tracker)`), or drive it directly
    with `start(game)` then `step(game, action)` after every action. `finished` says that
    every success check of a navigation/composite task has fired (the episode may end);
    interaction tasks never finish early. `result()` is a JSON-able summary.
    """

    def __init__(self, task: Task | str, probe: bool = True):
        if isinstance(task, str):
            from mmotif.tasks.catalog import get_task
            task = get_task(task)
        self.task = task
        self.use_probe = probe
        self._wired: dict[str, object] = {}
        self.probe: DungeonProbe | None = None
        self.rule = None
        self.active_skill: Callable[[], str | None] = lambda: None  # the env's skill, live

    # -- SkillEnv hook -------------------------------------------------------------------
    def begin(self, env) -> None:
        self.active_skill = lambda: env.skill
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
        return self.rule.attributes(self) if self.rule is not None else {}

    # -- episode ---------------------------------------------------------------------------
    def start(self, game) -> None:
        game.confirm = self.confirms
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
        self._offered_item: str | None = None   # an offer that identifies, awaiting its sale
        self.escaped = False
        self.altar_drops_proxy = self.altar_drops_exact = 0
        self.kills_proxy = self.kills_exact = 0
        self.ate_in_mines = self.ate_hungry_in_mines = False
        self.leave_attempts = 0
        self.on_oracle = self.oracle_seen = False          # ever (this episode)
        self.on_minetown = self.minetown_seen = False
        self.at_oracle = self.oracle_seen_here = False     # the current level
        self._last_offer = b""
        self.proxy: bool | None = None if self.task.counts_events else False
        self.exact: bool | None = None if self.task.counts_events else False
        self.proxy_step: int | None = None
        self.exact_step: int | None = None
        self.events: list[tuple[int, str]] = []
        self.game_over = False
        self.rule = self.task.rule() if self.task.rule is not None else None
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
        if self.rule is not None and self.rule.reads_levels:
            return "dungeon data" if self.probe is not None and self.probe.available else "glyphs"
        return "messages and status"

    @property
    def price_id_exact(self) -> int:
        return len(self._price_items)

    @property
    def finished(self) -> bool:
        return bool(not self.task.counts_events and self.proxy and self.exact)

    def confirms(self, prompt: bytes) -> bool:
        """The game's `confirm` hook: answer this yes/no prompt yes (the task's rule decides,
        from what the policy over skills is doing)."""
        return self.rule is not None and self.rule.confirms(self, prompt)

    def step(self, game, action: int) -> None:
        """Account for one played action; `game` shows the state after it."""
        prev_depth, prev_dnum, prev_hunger = self.depth, self.dnum, self.hunger
        self.steps += 1
        self.game_over = bool(getattr(game, "done", False))
        self.escaped = bool(getattr(game, "escaped", False))
        if not self.game_over:  # NLE zeroes the bottom line of a finished game: keep the last live one
            bl = game.blstats.tolist()
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
        if self.rule is not None:
            proxy, exact = self.rule.judge(self, msg, changed)
            if proxy:
                self._succeed("proxy")
            if exact:
                self._succeed("exact")

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
            if self._last_offer and reference_price_id(self._last_offer):
                self.price_id_proxy += 1
        sales = len(SALE.findall(msg))
        if sales:
            self.sales_exact += sales
            self._event(f"sale: {msg.decode('latin-1')[:80]}")
            if self._offered_item is not None:  # the price is known once the offer is taken (§15.2)
                self._price_items.add(self._offered_item)
                self._event(f"price identified: {self._offered_item}")
        self._offered_item = None
        offer = _OFFER.search(msg)
        self._last_offer = msg if offer else b""
        if offer:
            self.offers += 1
            item = offer.group(2).decode("latin-1")
            single = offer.group(3) == b"it"
            if single and item not in self._price_items and price_identifies(int(offer.group(1)), item):
                self._offered_item = item
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
        if LEAVE_PROMPT in msg:
            self.leave_attempts += 1
            self._event("tried to leave the dungeon")

    def _succeed(self, which: str) -> None:
        if which == "proxy" and not self.proxy:
            self.proxy, self.proxy_step = True, self.steps
            self._event("proxy success")
        elif which == "exact" and not self.exact:
            self.exact, self.exact_step = True, self.steps
            self._event("exact success")

    def exact_oracle(self, here: bool = False) -> bool:
        """The Oracle level reached (ever, or `here`: the current level is it)."""
        if self.probe is not None and self.probe.available:
            return self.at_oracle if here else self.on_oracle
        return self.oracle_seen_here if here else self.oracle_seen

    def exact_minetown(self) -> bool:
        if self.probe is not None and self.probe.available:
            return self.on_minetown
        return self.minetown_seen

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
            "xl4_on_dl1": self.xl4_on_dl1, "escaped": self.escaped,
            "counts": self.counts(),
            "events": [f"{s}: {e}" for s, e in self.events[:50]],
        }
