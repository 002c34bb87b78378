# Reference policy over skills for the task "Gnomish Mines" (spec §12.2), written for mmotif.
#
# Package data: a fragment of the NetHackPlayer class body, combined (CodePolicy.from_parts)
# after builtin/exploration.py and builtin/initiation_termination.py, whose helpers
# select_skill, reach_gnomish_mines and reach_dungeons_of_doom it uses; set_initial_values
# is generated from the task's data (mmotif.tasks.reference). Never imported.
#
# Strategy: go down to the Mines branch level, take its down staircase, and climb back to
# retry whenever the descent landed in the Dungeons of Doom instead.


def perform_task(self, current_skill, dungeon_depth, branch_number,
                 merchant_precondition=False, worshipper_precondition=False):
    return self.reach_gnomish_mines(current_skill, dungeon_depth, branch_number,
                                    merchant_precondition, worshipper_precondition)
