# Reference policy over skills for the task "Discovery Hunger" (spec §12.2), written for mmotif.
#
# Package data: a fragment of the NetHackPlayer class body, combined after
# builtin/exploration.py and builtin/initiation_termination.py; set_initial_values
# is generated from the task's data (mmotif.tasks.reference). Never imported.
#
# Attributes kept up to date by the environment every step (mmotif.tasks.paper.discoveryhunger):
#   self.eaten_food  the hero has eaten in the Gnomish Mines while hungry
#   self.hungry      the hero is hungry now
# eat_food is the setter a unit test (or simulation) calls.
#
# Strategy: reach the Gnomish Mines and explore there (the discoverer eats when hungry)
# until food has been eaten; then return to the Dungeons of Doom and descend to depth 9,
# the deepest the Oracle can be, and explore there.


def task_initial_values(self):
    self.explored_gnomish_mines = False


def eat_food(self):
    self.eaten_food = True


def perform_task(self, current_skill, dungeon_depth, branch_number,
                 merchant_precondition=False, worshipper_precondition=False):
    if not self.eaten_food:
        if branch_number == 2 or self.explored_gnomish_mines:
            self.explored_gnomish_mines = True
            return "discoverer"
        return self.reach_gnomish_mines(current_skill, dungeon_depth, branch_number,
                                        merchant_precondition, worshipper_precondition)
    if branch_number != 0:
        return self.reach_dungeons_of_doom(current_skill, dungeon_depth, branch_number,
                                           merchant_precondition, worshipper_precondition)
    if dungeon_depth < 9:
        return "descender"
    return "discoverer"
