"""Price Identified: offer items for sale so that the price identifies them (counts only)."""

from __future__ import annotations

from mmotif.tasks.base import MINES_HINT, SHOP_HINT, PaperResult, Task, starting_values

TASK = Task(
    name="price", title="Price Identified", kind="interaction", order=5,
    instruction=("Find a shopkeeper and offer items for sale, so that the price they offer "
                 "identifies what the items are."),
    hints=(MINES_HINT, SHOP_HINT),
    initial_values=starting_values(5, 500), paper=PaperResult(0.47, 0.01, "count"),
    metric="price_identified",
    proxy_rule="a sale right after an offer whose doubled price is a base-price tier of the "
               "item's class (the reference's rule)",
    exact_rule="distinct unidentified items sold right after an offer at a price that maps back "
               "(x1/2, or x3/8 from a suspicious shopkeeper, per unit) to a base-price tier of "
               "their class",
)
