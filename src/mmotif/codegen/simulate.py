"""A scripted depth/branch world for checking policies over skills without NetHack (spec §6.1).

The world is the one of the paper's unit-test scaffolds: one "turn" is one skill run to its
end; the Descender goes one level down, the Ascender one level up; a descent from the
Mines-branch level (``branch_depth``, in the Dungeons of Doom) lands in the Gnomish Mines
(branch 2) or stays in the Dungeons of Doom (branch 0) with probability 0.5 each; climbing
from the first Mines level returns to the Dungeons of Doom. Other skills leave the level
unchanged.

`simulate` drives a real, sandboxed :class:`~mmotif.skills.code_policy.CodePolicy` through
that world (the same calls the env makes) and returns the trace, so reference policies and
generated ones are checked the same way.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["SimTurn", "format_trace", "simulate"]


@dataclass(frozen=True)
class SimTurn:
    turn: int
    skill: str          # the skill that ran during this turn
    depth: int          # depth when the skill started
    branch: int
    attributes: Mapping[str, object]


def simulate(
    policy,
    turns: int = 20,
    branch_depth: int = 2,
    seed: int = 0,
    attributes: Callable[[int, int, int, str], Mapping[str, object]] | None = None,
    merchant_at: Callable[[int, int], bool] | None = None,
    worshipper_at: Callable[[int, int], bool] | None = None,
    stop: Callable[[SimTurn], bool] | None = None,
    show: tuple[str, ...] = (),
) -> list[SimTurn]:
    """Run `policy` for `turns` skill terminations in the scripted world.

    attributes(turn, depth, branch, skill) -> values the env would set on the policy
    before it chooses (e.g. ``{"gold_pieces": 30}``); merchant_at / worshipper_at(depth,
    branch) -> precondition values; stop(turn) ends the run early; `show` names policy
    attributes copied into each SimTurn.
    """
    rng = random.Random(seed)
    skill = policy.new_episode()
    policy.set_attribute("branch_depth", branch_depth)
    depth, branch = 1, 0
    trace: list[SimTurn] = []
    for turn in range(1, turns + 1):
        shown = {name: policy.attribute(name) for name in show}
        record = SimTurn(turn, skill, depth, branch, shown)
        trace.append(record)
        if stop is not None and stop(record):
            break
        # the skill runs to its end and changes the world
        if skill == "descender":
            if branch == 0 and depth == branch_depth:
                branch = rng.choice([0, 2])
            depth += 1
        elif skill == "ascender" and depth > 1:
            depth -= 1
            if branch == 2 and depth == branch_depth:
                branch = 0
        if attributes is not None:
            for name, value in attributes(turn, depth, branch, skill).items():
                policy.set_attribute(name, value)
        pre = {}
        if "merchant" in policy.skills_with_precondition:
            pre["merchant_precondition"] = bool(merchant_at and merchant_at(depth, branch))
        if "worshipper" in policy.skills_with_precondition:
            pre["worshipper_precondition"] = bool(worshipper_at and worshipper_at(depth, branch))
        skill = policy.next_skill(skill, depth, branch, **pre)
    return trace


def format_trace(trace: list[SimTurn]) -> str:
    lines = []
    for t in trace:
        extra = "".join(f", {k} = {v}" for k, v in t.attributes.items())
        lines.append(f"Turn {t.turn}: Skill = {t.skill}, Dungeon depth = {t.depth}, "
                     f"Branch Number = {t.branch}{extra}")
    return "\n".join(lines)
