"""Discovery Hunger: eat in the Mines once hungry, then reach the Oracle's level."""

from __future__ import annotations

from types import MappingProxyType

from mmotif.tasks.base import (
    HUNGRY, MINES_HINT, ORACLE_HINT, ORACLE_PROXY_DEPTH, PaperResult, SuccessRule, Task, starting_values,
)


class AteThenReached(SuccessRule):
    reads_levels = True

    def judge(self, t, msg, changed):
        return (t.ate_in_mines and changed and t.depth >= ORACLE_PROXY_DEPTH,
                t.ate_hungry_in_mines and t.exact_oracle(here=True))     # arrived after eating

    def attributes(self, t):
        return {"eaten_food": t.ate_hungry_in_mines, "hungry": t.hunger >= HUNGRY}


TASK = Task(
    name="discoveryhunger", title="Discovery Hunger", kind="composite", order=9,
    instruction=("Find the Gnomish Mines and, once the player is hungry, eat there; only "
                 "after that, go to the Oracle's level in the Dungeons of Doom."),
    hints=(MINES_HINT, ORACLE_HINT, "Eating is done by the Discoverer skill when the player is hungry."),
    initial_values=starting_values(10, 500), paper=PaperResult(0.0791, 0.0147, "rate"), metric="success",
    proxy_rule=f"an eat step in the Mines, then arrival at depth ≥{ORACLE_PROXY_DEPTH}",
    exact_rule="an eat step in the Mines while Hungry (or worse), then the Oracle level",
    attributes=MappingProxyType({
        "eaten_food": "the player has eaten in the Gnomish Mines while hungry (bool)",
        "hungry": "the player is hungry now (bool)",
    }),
    rule=AteThenReached,
)
