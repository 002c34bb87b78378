"""Delphi: reach the Oracle's level, fast, without the Mines."""

from __future__ import annotations

from mmotif.tasks.base import MINES_HINT, ORACLE_HINT, ORACLE_PROXY_DEPTH, PaperResult, SuccessRule, Task, starting_values


class Reached(SuccessRule):
    reads_levels = True

    def judge(self, t, msg, changed):
        return t.deepest >= ORACLE_PROXY_DEPTH, t.exact_oracle()


TASK = Task(
    name="delphi", title="Delphi", kind="navigation", order=2, aliases=("oracle",),
    instruction=("Reach the Oracle's level (Delphi) in the Dungeons of Doom as quickly as "
                 "possible: do not explore the first levels and do not go into the Gnomish Mines."),
    hints=(MINES_HINT, ORACLE_HINT),
    initial_values=starting_values(10, 50), paper=PaperResult(0.29, 0.012, "rate"), metric="success",
    proxy_rule=f"dungeon level {ORACLE_PROXY_DEPTH} or deeper reached (the reference's 'Level 7')",
    exact_rule="the hero stands on the Oracle level (NetHack's own dungeon data)",
    rule=Reached,
)
