"""Level Up & Sell: XL 4 on DL1, then a sale, then survive."""

from __future__ import annotations

from types import MappingProxyType

from mmotif.tasks.base import LEVELUP_XL, MINES_HINT, SHOP_HINT, PaperResult, SuccessRule, Task, starting_values
from mmotif.tasks.tracker import SALE

SURVIVE_AFTER_SALE = 300       # env steps to survive after the sale


class SoldAndSurvived(SuccessRule):
    def __init__(self):
        self.proxy_sale_step: int | None = None
        self.exact_sale_step: int | None = None

    def judge(self, t, msg, changed):
        if self.proxy_sale_step is None and b"sold" in msg:
            self.proxy_sale_step = t.steps
        if self.exact_sale_step is None and t.xl4_on_dl1 and SALE.search(msg):
            self.exact_sale_step = t.steps
        alive = not t.game_over
        return (alive and self.proxy_sale_step is not None and t.steps - self.proxy_sale_step > SURVIVE_AFTER_SALE,
                alive and self.exact_sale_step is not None and t.steps - self.exact_sale_step > SURVIVE_AFTER_SALE)

    def attributes(self, t):
        return {"xp_level": t.xl, "items_sold": t.sales_exact}


TASK = Task(
    name="levelupsell", title="Level Up & Sell", kind="composite", order=8,
    aliases=("level up and sell",),
    instruction=(f"Stay on the first dungeon level until the player reaches experience level "
                 f"{LEVELUP_XL}; then find a shopkeeper and sell an item; then stay alive for "
                 f"{SURVIVE_AFTER_SALE} more steps."),
    hints=(MINES_HINT, SHOP_HINT),
    initial_values=starting_values(5, 500), paper=PaperResult(0.0709, 0.0099, "rate"), metric="success",
    proxy_rule=f"a 'sold' message, then {SURVIVE_AFTER_SALE} more steps alive (XL and DL1 unchecked)",
    exact_rule=f"XL ≥{LEVELUP_XL} reached before ever leaving DL1, then a real sale, then "
               f"{SURVIVE_AFTER_SALE} more steps alive",
    attributes=MappingProxyType({
        "xp_level": "the hero's experience level (int)",
        "items_sold": "items sold this episode (int)",
    }),
    rule=SoldAndSurvived,
)
