"""What a task is: its data, its success rule, and the starting values of its policy.

A task is one module of :mod:`mmotif.tasks.paper` defining ``TASK`` (a :class:`Task`) and,
for a navigation or composite task, its :class:`SuccessRule`; its reference policy over
skills lies beside it as ``<name>.policy.py``. The catalog finds the modules by itself, so
adding a task is those two files. This module imports no NLE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from mmotif.tasks.tracker import TaskTracker

__all__ = [
    "HUNGRY", "LEVELUP_XL", "MINES_HINT", "ORACLE_HINT", "ORACLE_PROXY_DEPTH", "SHOP_HINT",
    "Kind", "PaperResult", "SuccessRule", "Task", "starting_values", "starting_values_source",
]

Kind = Literal["navigation", "interaction", "composite"]

# NetHack facts that more than one task (or the tracker) reads --------------------------
HUNGRY = 2                     # u.uhs: 0 satiated, 1 not hungry, 2 hungry, 3 weak, 4 fainting
ORACLE_PROXY_DEPTH = 7         # the reference's "Level 7" overview test (§10.2)
LEVELUP_XL = 4                 # Level Up & Sell: the experience level to reach on DL1

# Dungeon-layout hints shared by several tasks (§12.1) ------------------------------------
MINES_HINT = ("The Dungeons of Doom are branch 0. On one of the levels 2 to 4 (branch_depth) a "
              "second down staircase leads to the Gnomish Mines (branch 2), whose first level is "
              "branch_depth + 1; from branch_depth a descent lands in either branch with "
              "probability 0.5, since the two staircases cannot be told apart.")
ORACLE_HINT = "The Oracle is in the Dungeons of Doom, on a level between 5 and 9."
SHOP_HINT = "Shopkeepers are found mostly in the Dungeons of Doom, never on dungeon level 1."


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


class SuccessRule:
    """One task's success test over one episode (a fresh instance per episode).

    ``judge`` is called after every step, once the tracker has done its bookkeeping, and
    says whether the proxy (the reference evaluator's test, §10.2) and the exact test (what
    the instruction asks, §15.2) hold now; the tracker keeps the first step each one held.
    ``attributes`` gives the values of the task's env-kept policy attributes. ``confirms``
    answers a yes/no prompt the game would otherwise decline (e.g. leaving the dungeon).
    """

    reads_levels: ClassVar[bool] = False     # the exact test asks which special level this is

    def judge(self, t: TaskTracker, msg: bytes, changed: bool) -> tuple[bool, bool]:
        raise NotImplementedError

    def attributes(self, t: TaskTracker) -> dict[str, object]:
        return {}

    def confirms(self, t: TaskTracker, prompt: bytes) -> bool:
        return False


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
    order: int                             # its row in the paper's task table (§10.2)
    attributes: Mapping[str, str] = field(default_factory=dict)   # env-kept policy attributes
    rule: type[SuccessRule] | None = None  # None: an interaction task (counts only)
    aliases: tuple[str, ...] = ()          # other names get_task accepts (lower case)
    policy: str = ""                       # whose reference policy it runs ("": its own)

    @property
    def counts_events(self) -> bool:
        return self.kind == "interaction"

    def tracker(self, probe: bool = True) -> TaskTracker:
        from mmotif.tasks.tracker import TaskTracker

        return TaskTracker(self, probe=probe)


def starting_values(max_depth: int, discoverer: int) -> Mapping[str, int]:
    """A task's `initial_values` (§10.2)."""
    return MappingProxyType({"max_depth": max_depth, "discoverer_skill_steps": discoverer})


def _default_for(description: str):
    return False if "(bool)" in description else 0


def starting_values_source(initial_values: Mapping[str, int], attributes: Mapping[str, str] = MappingProxyType({}),
                           call_own: bool = False) -> str:
    """A policy's `set_initial_values` fragment from a task's data (spec §6.1, §10.2).

    Env-kept attributes start at 0 / False (the env overwrites them before the first call).
    With `call_own`, the class's own starting values (a method ``task_initial_values``) are
    set first, so attributes the policy keeps for itself exist too.
    """
    discoverer = int(initial_values.get("discoverer_skill_steps", 500))
    lines = ["def set_initial_values(self):"]
    for name, description in attributes.items():
        lines.append(f"    self.{name} = {_default_for(description)!r}")
    if call_own:
        lines.append("    self.task_initial_values()")
    lines += [
        '    self.skill = "discoverer"',
        f"    self.max_depth = {int(initial_values.get('max_depth', 5))}",
        f"    self.discoverer_skill_steps = {discoverer}",
        f"    self.merchant_skill_steps = {20 * discoverer}",
        f"    self.worshipper_skill_steps = {20 * discoverer}",
    ]
    return "\n".join(lines) + "\n"
