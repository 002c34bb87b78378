# Reference policy over skills for the task "Minetown" (spec §12.2), written for mmotif.
#
# Package data: a fragment of the NetHackPlayer class body, combined after
# builtin/exploration.py and builtin/initiation_termination.py; set_initial_values
# is generated from the task's data (mmotif.tasks.reference). Never imported.
#
# Strategy: reach the Gnomish Mines, then descend without exploring down to depth 8 (the
# deepest Minetown can be); there, explore.


def perform_task(self, current_skill, dungeon_depth, branch_number,
                 merchant_precondition=False, worshipper_precondition=False):
    if branch_number == 2:
        if dungeon_depth < 8:
            return "descender"
        return "discoverer"
    return self.reach_gnomish_mines(current_skill, dungeon_depth, branch_number,
                                    merchant_precondition, worshipper_precondition)
