# Reference policy over skills for the task "Golden Exit" (spec §12.2), written for mmotif.
#
# Package data: a fragment of the NetHackPlayer class body, combined after
# builtin/exploration.py and builtin/initiation_termination.py; set_initial_values
# is generated from the task's data (mmotif.tasks.reference). Never imported.
#
# Attributes kept up to date by the environment every step (mmotif.tasks.paper.goldenexit):
#   self.gold_pieces        gold the hero holds
#   self.monsters_defeated  monsters the hero has killed this episode
# update_gold / defeat_monster are the setters a unit test (or simulation) calls.
#
# Strategy: sweep dungeon levels 1-3 of the Dungeons of Doom (max_depth 3) until 20 gold
# and 25 kills, leaving the Mines if a descent lands there; then climb to level 1 and keep
# taking its up staircase, which asks whether to leave the dungeon.


def update_gold(self, gold):
    self.gold_pieces = gold


def defeat_monster(self):
    self.monsters_defeated = self.monsters_defeated + 1


def perform_task(self, current_skill, dungeon_depth, branch_number,
                 merchant_precondition=False, worshipper_precondition=False):
    if self.gold_pieces >= 20 and self.monsters_defeated >= 25:
        if branch_number == 2:
            return self.reach_dungeons_of_doom(current_skill, dungeon_depth, branch_number,
                                               merchant_precondition, worshipper_precondition)
        return "ascender"
    if branch_number == 2:
        return self.reach_dungeons_of_doom(current_skill, dungeon_depth, branch_number,
                                           merchant_precondition, worshipper_precondition)
    return self.select_skill(current_skill, dungeon_depth,
                             merchant_precondition, worshipper_precondition)
