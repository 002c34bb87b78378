"""BUC Identified: drop items on an altar (counts only)."""

from __future__ import annotations

from mmotif.tasks.base import MINES_HINT, PaperResult, Task, starting_values

TASK = Task(
    name="buc", title="BUC Identified", kind="interaction", order=6,
    instruction=("Find an altar and drop items on it to learn whether they are blessed, "
                 "uncursed or cursed."),
    hints=(MINES_HINT, "Altars can be found from dungeon level 1 on."),
    initial_values=starting_values(5, 500), paper=PaperResult(1.60, 0.01, "count"),
    metric="altar_drops",
    proxy_rule="DROP steps whose message mentions the altar but neither 'cursed' nor 'blessed'",
    exact_rule="DROP steps answered by the altar ('lands on the altar' or a flash)",
)
