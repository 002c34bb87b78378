"""Skill competence on a fixed yardstick: per-skill outcome rates no reward model defines.

The skill env counts, on every step, the events below and credits them to the skill that
chose the step's action (the one active *before* any switch the step causes). A rate is
events per 1,000 env steps of that skill. Beside a trained run's rates, the same rates of
a uniform-random action policy under the same policy over skills and env settings
(`mmotif.skills.baseline`) are the yardstick's zero.

Events (`EVENTS`, data) and how each is detected:

    descent         the dungeon depth (blstats) went up on the step
    ascent          the depth went down
    new_cells       map cells of this level seen for the first time: glyphs that are no
                    longer unexplored stone (counts cells, not steps)
    kill            experience points went up, or "You kill/destroy ..."
    altar_identify  a dropped object's curse status shown by an altar: "There is a black
                    (amber) flash as ... hit(s) the altar." or "... land(s) on the altar."
    altar_seen      "There is an altar ..." (stepping on one or looking at it)
    shop_offer      "<shopkeeper> offers N gold pieces for ...  Sell it?"
    sale            "You sold ..."

`SKILL_EVENTS` names the events that measure each of the paper's skills; every event is
still counted for every skill, so a descent by the discoverer shows as such.

The end of a game: the env keeps the last live bottom line (NLE zeroes it), so a death is
neither an ascent nor a kill, and the blank final map is not read (no cells).
Cost per step (~2 us): a few int compares, a literal keyword pre-filter on the message (the
event regexes run only on a hit), and a numpy count of the 21x79 glyphs that are not
stone, only when game time passed or the hero moved.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from mmotif.contract import EpisodeSummary
from mmotif.nethack.features import BL_DEPTH, BL_DNUM, BL_TIME, BL_X, BL_Y

BL_EXP = 19  # NLE_BL_EXP: experience points
STONE_GLYPH = 2359  # GLYPH_CMAP_OFF + S_stone: a map cell never seen (NLE's blank)
PER_STEPS = 1000  # rates are events per this many steps of the acting skill


@dataclass(frozen=True)
class EventDef:
    """One countable outcome. Detected on a step when any of its detectors fires (once per
    step), except `new_cells`, which adds the number of cells.

    `message` is a regex searched in the step's message, but only when the message holds
    one of `keywords` (plain substrings, one of which every match contains): a literal
    pre-filter keeps the regexes off the many messages that match none."""

    name: str
    description: str
    depth: int = 0  # +1: the depth went up (deeper), -1: it went down
    blstat_up: int | None = None  # a blstats field that went up
    message: bytes | None = None
    keywords: tuple[bytes, ...] = ()
    new_cells: bool = False


EVENTS: tuple[EventDef, ...] = (
    EventDef("descent", "went one or more levels deeper", depth=+1),
    EventDef("ascent", "went one or more levels up", depth=-1),
    EventDef("new_cells", "map cells of the level seen for the first time", new_cells=True),
    EventDef("kill", "killed a monster (experience went up, or 'You kill')", blstat_up=BL_EXP,
             message=rb"You (?:kill|destroy) ", keywords=(b"You kill", b"You destroy")),
    EventDef("altar_identify", "an altar showed a dropped object's curse status",
             message=rb"flash as .+? hits? the altar|lands? on the altar", keywords=(b"altar",)),
    EventDef("altar_seen", "'There is an altar' (on or looking at one)",
             message=rb"There is an altar", keywords=(b"altar",)),
    EventDef("shop_offer", "a shopkeeper offered gold for an item",
             message=rb"offers (?:only )?\d+ gold pieces? for|Sell (?:it|them)\?",
             keywords=(b"gold piece", b"Sell ")),
    EventDef("sale", "sold an item to a shopkeeper", message=rb"You sold ", keywords=(b"You sold",)),
)
EVENT_NAMES: tuple[str, ...] = tuple(e.name for e in EVENTS)

# The yardstick: which events measure which skill (skills not named here have none).
SKILL_EVENTS: Mapping[str, tuple[str, ...]] = {
    "descender": ("descent",),
    "ascender": ("ascent",),
    "discoverer": ("new_cells", "kill"),
    "worshipper": ("altar_identify", "altar_seen"),
    "merchant": ("shop_offer", "sale"),
}


def definitions_fingerprint(events: Iterable[EventDef] = EVENTS) -> str:
    """A text that changes whenever an event definition does (part of the baseline key)."""
    return repr((tuple(events), sorted(SKILL_EVENTS.items()), STONE_GLYPH, PER_STEPS))


class CompetenceCounter:
    """Event counts per skill for one episode, updated once per env step.

    `reset(bl, glyphs)` at the start of a game; `update(skill_id, bl, message, glyphs,
    live)` after each played action with the bottom line the env keeps (`live` False on
    the step that ended the game); `summary(names)` -> {skill: {event: count}}.
    """

    def __init__(self, num_skills: int, events: tuple[EventDef, ...] = EVENTS):
        self.events = tuple(events)
        self.num_skills = num_skills
        for e in self.events:
            if e.message is not None and not e.keywords:
                raise ValueError(f"event {e.name!r}: a message pattern needs its keywords")
        self._deeper = tuple(e.name for e in self.events if e.depth > 0)
        self._shallower = tuple(e.name for e in self.events if e.depth < 0)
        self._blstat = tuple((e.name, e.blstat_up) for e in self.events if e.blstat_up is not None)
        self._patterns = tuple((e.name, re.compile(e.message)) for e in self.events if e.message is not None)
        keywords = sorted({k for e in self.events for k in e.keywords}, key=len, reverse=True)
        self._prefilter = re.compile(b"|".join(re.escape(k) for k in keywords)).search if keywords else None
        cells = [e.name for e in self.events if e.new_cells]
        self._cells = cells[0] if cells else None
        self._not_stone = np.zeros((21, 79), bool)  # reused by every count (no allocation)
        self._stone = np.int16(STONE_GLYPH)
        self.rows: list[dict[str, int]] = []
        self._depth = self._dnum = 0
        self._prev: list[int] = []
        self._levels: dict[tuple[int, int], int] = {}
        self._best = 0
        self._where = (0, 0, 0)

    def reset(self, bl, glyphs) -> None:
        names = [e.name for e in self.events]
        self.rows = [dict.fromkeys(names, 0) for _ in range(self.num_skills)]
        self._depth, self._dnum = bl[BL_DEPTH], bl[BL_DNUM]
        self._prev = [bl[field] for _, field in self._blstat]
        self._levels = {}
        self._where = (bl[BL_TIME], bl[BL_X], bl[BL_Y])
        # what is in view at the start of a game is nobody's discovery
        self._best = self._seen(glyphs) if self._cells else 0

    def _seen(self, glyphs) -> int:
        """Cells of the map that are not unexplored stone."""
        out = self._not_stone
        if glyphs.shape != out.shape:
            out = self._not_stone = np.zeros(glyphs.shape, bool)
        np.not_equal(glyphs, self._stone, out=out)
        return int(np.count_nonzero(out))

    def update(self, skill: int, bl, message: bytes, glyphs, live: bool = True) -> None:
        row = self.rows[skill]
        depth, dnum = bl[BL_DEPTH], bl[BL_DNUM]
        moved = depth != self._depth or dnum != self._dnum
        if moved:
            self._new_level(row, depth, dnum)
        fired = ()
        if self._blstat:
            prev = self._prev
            for i, (name, field) in enumerate(self._blstat):
                value = bl[field]
                if value != prev[i]:
                    if value > prev[i]:
                        row[name] += 1
                        fired = (*fired, name)
                    prev[i] = value
        if message and self._prefilter is not None and self._prefilter(message):
            for name, pattern in self._patterns:
                if name not in fired and pattern.search(message):
                    row[name] += 1
        if live and self._cells is not None:
            # the map changes only when game time passes or the hero moves (a fast hero's
            # extra move keeps the turn); a zero-time step (a refused command, a prompt
            # answer) skips the count. A rare change without either (a search in an extra
            # move) is counted on the next step that moves.
            where = (bl[BL_TIME], bl[BL_X], bl[BL_Y])
            if moved or where != self._where:
                self._where = where
                seen = self._seen(glyphs)
                if seen > self._best:
                    row[self._cells] += seen - self._best
                    self._best = seen

    def _new_level(self, row: dict, depth: int, dnum: int) -> None:
        for name in (self._deeper if depth > self._depth else self._shallower if depth < self._depth else ()):
            row[name] += 1
        self._levels[(self._dnum, self._depth)] = self._best
        self._best = self._levels.get((dnum, depth), 0)
        self._depth, self._dnum = depth, dnum

    def summary(self, names: Iterable[str]) -> dict[str, dict[str, int]]:
        return {name: row.copy() for name, row in zip(names, self.rows)}


# -- aggregation ------------------------------------------------------------------------------
def rate(count: float, steps: float) -> float:
    """Events per `PER_STEPS` steps (NaN without steps)."""
    return PER_STEPS * count / steps if steps > 0 else math.nan


class CompetenceTally:
    """Event counts and skill steps summed over episodes (episode summaries of the env:
    `competence` and `skill_steps`)."""

    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}
        self.skill_steps: dict[str, int] = {}
        self.episodes = 0

    def add(self, competence: Mapping[str, Mapping[str, int]], skill_steps: Mapping[str, int],
            sign: int = 1) -> None:
        for skill, n in skill_steps.items():
            self.skill_steps[skill] = self.skill_steps.get(skill, 0) + sign * int(n)
        for skill, events in competence.items():
            row = self.counts.setdefault(skill, {})
            for event, n in events.items():
                row[event] = row.get(event, 0) + sign * int(n)
        self.episodes += sign

    def add_episode(self, episode: EpisodeSummary) -> None:
        self.add(episode.competence, episode.skill_steps)

    def rates(self, yardstick: bool = True) -> dict[str, dict[str, float]]:
        """{skill: {event: rate}} for every skill that acted; `yardstick`: only the events of
        `SKILL_EVENTS` (skills without any are left out), else every counted event."""
        out = {}
        for skill, steps in self.skill_steps.items():
            if steps <= 0:
                continue
            counts = self.counts.get(skill, {})
            events = SKILL_EVENTS.get(skill, ()) if yardstick else tuple(counts) or EVENT_NAMES
            if events:
                out[skill] = {event: rate(counts.get(event, 0), steps) for event in events}
        return out

    def pooled_rates(self, skills: Iterable[str]) -> dict[str, dict[str, float]]:
        """{skill: {event: rate}} for the yardstick events of `skills`, over the steps of
        *every* skill: what a policy that ignores the active skill (random actions) does
        per 1,000 steps anywhere, for skills it never reached under the schedule."""
        total = sum(self.skill_steps.values())
        out = {}
        for skill in skills:
            events = SKILL_EVENTS.get(skill, ())
            if events and total > 0:
                out[skill] = {event: rate(sum(r.get(event, 0) for r in self.counts.values()), total)
                              for event in events}
        return out

    def to_dict(self) -> dict:
        return {"episodes": self.episodes, "skill_steps": dict(self.skill_steps),
                "counts": {s: dict(r) for s, r in self.counts.items()}}


class WindowTally(CompetenceTally):
    """A `CompetenceTally` over the most recent finished episodes that hold at least
    `window_steps` env steps (older ones are dropped once the newer ones alone reach it)."""

    def __init__(self, window_steps: int = 200_000):
        super().__init__()
        self.window_steps = window_steps
        self._episodes: deque = deque()
        self._steps = 0

    def add_episode(self, episode: EpisodeSummary) -> None:
        competence, steps = episode.competence, episode.skill_steps
        self.add(competence, steps)
        total = sum(steps.values())
        self._episodes.append((competence, steps, total))
        self._steps += total
        while len(self._episodes) > 1 and self._steps - self._episodes[0][2] >= self.window_steps:
            old_competence, old_steps, old_total = self._episodes.popleft()
            self.add(old_competence, old_steps, sign=-1)
            self._steps -= old_total


def metric_values(rates: Mapping[str, Mapping[str, float]], prefix: str = "competence") -> dict[str, float]:
    """{"<prefix>/<skill>:<event>": rate} for the finite rates (metrics-sink keys)."""
    return {f"{prefix}/{skill}:{event}": float(value)
            for skill, events in rates.items() for event, value in events.items()
            if math.isfinite(value)}
