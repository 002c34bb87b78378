"""Gnomish Mines: get into the Mines."""

from __future__ import annotations

from mmotif.tasks.base import MINES_HINT, PaperResult, SuccessRule, Task, starting_values


class Reached(SuccessRule):
    def judge(self, t, msg, changed):
        entered = t.mines_start is not None
        return entered, entered


TASK = Task(
    name="gnomish", title="Gnomish Mines", kind="navigation", order=1, aliases=("mines",),
    instruction="Get the player into the Gnomish Mines.",
    hints=(MINES_HINT,),
    initial_values=starting_values(5, 500), paper=PaperResult(0.46, 0.017, "rate"), metric="success",
    proxy_rule="the hero is in dungeon number 2 (the Mines) at any step",
    exact_rule="the same: dungeon number 2 is the Gnomish Mines",
    rule=Reached,
)
