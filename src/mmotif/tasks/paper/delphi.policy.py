# Reference policy over skills for the task "Delphi" (spec §12.2), written for mmotif.
#
# Package data: a fragment of the NetHackPlayer class body, combined after
# builtin/exploration.py and builtin/initiation_termination.py; set_initial_values
# is generated from the task's data (mmotif.tasks.reference). Never imported.
#
# Strategy: leave the Gnomish Mines if a descent landed there; in the Dungeons of Doom keep
# descending (each descent ends the descender, which is chosen again) down to depth 9,
# where the Oracle level lies at the latest; from there on explore with select_skill.


def perform_task(self, current_skill, dungeon_depth, branch_number,
                 merchant_precondition=False, worshipper_precondition=False):
    if branch_number != 0:
        return self.reach_dungeons_of_doom(current_skill, dungeon_depth, branch_number,
                                           merchant_precondition, worshipper_precondition)
    if dungeon_depth < 9:
        return "descender"
    return self.select_skill(current_skill, dungeon_depth,
                             merchant_precondition, worshipper_precondition)
