"""Transactions: sell items to a shopkeeper (counts only)."""

from __future__ import annotations

from mmotif.tasks.base import MINES_HINT, SHOP_HINT, PaperResult, Task, starting_values

TASK = Task(
    name="transactions", title="Transactions", kind="interaction", order=4,
    instruction="Find a shopkeeper and sell items to them successfully.",
    hints=(MINES_HINT, SHOP_HINT),
    initial_values=starting_values(5, 500), paper=PaperResult(0.66, 0.01, "count"), metric="sales",
    proxy_rule="steps whose message contains 'sold'",
    exact_rule="'You sold <item> for <n> gold' messages",
    policy="price",                        # sell whenever a shopkeeper is in reach, as for price
)
