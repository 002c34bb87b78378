# Reference policy over skills for the task "Level Up & Sell" (spec §12.2), written for mmotif.
#
# Package data: a fragment of the NetHackPlayer class body, combined after
# builtin/exploration.py and builtin/initiation_termination.py; set_initial_values
# is generated from the task's data (mmotif.tasks.reference). Never imported.
#
# Attributes kept up to date by the environment every step (mmotif.tasks.paper.levelupsell):
#   self.xp_level    the hero's experience level
#   self.items_sold  items sold this episode
# update_xp_level / sell_item are the setters a unit test (or simulation) calls.
#
# Strategy: explore dungeon level 1 (the discoverer, chosen again every 500 turns) until
# experience level 4; then look for a shopkeeper in the Dungeons of Doom and sell; after
# the sale, go on exploring with select_skill to stay alive.


def update_xp_level(self, level):
    self.xp_level = level


def sell_item(self):
    self.items_sold = self.items_sold + 1


def perform_task(self, current_skill, dungeon_depth, branch_number,
                 merchant_precondition=False, worshipper_precondition=False):
    if self.xp_level < 4:
        return "discoverer"
    if self.items_sold == 0:
        if merchant_precondition:
            return "merchant"
        return self.reach_dungeons_of_doom(current_skill, dungeon_depth, branch_number,
                                           merchant_precondition, worshipper_precondition)
    return self.select_skill(current_skill, dungeon_depth,
                             merchant_precondition, worshipper_precondition)
