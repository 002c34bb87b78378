"""Golden Exit: gold and kills on the first three levels, then leave by the DL1 upstairs."""

from __future__ import annotations

from types import MappingProxyType

from mmotif.tasks.base import MINES_HINT, PaperResult, SuccessRule, Task, starting_values
from mmotif.tasks.tracker import LEAVE_PROMPT

GOLDEN_KILLS, GOLDEN_GOLD, GOLDEN_DEPTH = 25, 20, 3


class LeftRich(SuccessRule):
    """Proxy: the reference's test, the prerequisites hold when the leave prompt appears.
    Exact: the prerequisites held when the hero actually left the dungeon."""

    def judge(self, t, msg, changed):
        if LEAVE_PROMPT not in msg or t.gold < GOLDEN_GOLD:
            return False, False
        return (t.kills_proxy >= GOLDEN_KILLS and t.deepest >= GOLDEN_DEPTH,
                t.escaped and t.kills_exact >= GOLDEN_KILLS and t.deepest_dod >= GOLDEN_DEPTH)

    def confirms(self, t, prompt):
        # the policy over skills running the Ascender on DL1 is the policy choosing to leave
        return LEAVE_PROMPT in prompt and t.active_skill() == "ascender" and (t.dnum, t.depth) == (0, 1)

    def attributes(self, t):
        return {"gold_pieces": t.gold, "monsters_defeated": t.kills_exact}


TASK = Task(
    name="goldenexit", title="Golden Exit", kind="composite", order=7,
    instruction=(f"Move between the first three levels of the Dungeons of Doom, going down to "
                 f"level 3 at least once, until you hold at least {GOLDEN_GOLD} gold pieces "
                 f"and have defeated {GOLDEN_KILLS} monsters; then leave the dungeon by the up "
                 f"staircase of level 1."),
    hints=(MINES_HINT, "Taking the up staircase on dungeon level 1 asks whether to leave the "
                       "dungeon; that is the exit."),
    initial_values=starting_values(3, 500), paper=PaperResult(0.248, 0.0118, "rate"), metric="success",
    proxy_rule=f"with ≥{GOLDEN_KILLS} 'kill'/'destroy' messages, gold ≥{GOLDEN_GOLD} and depth "
               f"{GOLDEN_DEPTH} reached, the leave prompt on DL1 appears",
    exact_rule=f"the same with the hero's own kills ('You kill/destroy'), DL{GOLDEN_DEPTH} of the "
               f"Dungeons of Doom reached, and the hero leaves (the prompt is answered yes when "
               f"the policy runs the Ascender on DL1)",
    attributes=MappingProxyType({
        "gold_pieces": "gold the hero holds now (int)",
        "monsters_defeated": "monsters the hero has killed this episode (int)",
    }),
    rule=LeftRich,
)
