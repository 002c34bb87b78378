"""Minetown: into the Mines, then straight down to Minetown."""

from __future__ import annotations

from mmotif.tasks.base import MINES_HINT, PaperResult, SuccessRule, Task, starting_values


class Reached(SuccessRule):
    reads_levels = True

    def judge(self, t, msg, changed):
        proxy = t.mines_start in (2, 3, 4) and t.mines_deepest >= t.mines_start + 2
        return proxy, t.exact_minetown()


TASK = Task(
    name="minetown", title="Minetown", kind="navigation", order=3,
    instruction=("Enter the Gnomish Mines and then go straight down to Minetown without "
                 "exploring on the way."),
    hints=(MINES_HINT, "Minetown lies in the Gnomish Mines, 3 or 4 levels below the branch, "
                       "at most at depth 8."),
    initial_values=starting_values(5, 50), paper=PaperResult(0.072, 0.005, "rate"), metric="success",
    proxy_rule="the third Mines level reached while the Mines start at depth 2, 3 or 4 "
               "(the reference's overview strings)",
    exact_rule="the hero stands on the Minetown level (NetHack's own dungeon data)",
    rule=Reached,
)
