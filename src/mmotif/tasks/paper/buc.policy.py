# Reference policy over skills for the task "BUC Identified" (spec §12.2), written for mmotif.
#
# Package data: a fragment of the NetHackPlayer class body, combined after
# builtin/exploration.py and builtin/initiation_termination.py; set_initial_values
# is generated from the task's data (mmotif.tasks.reference). Never imported.
#
# Strategy: whenever an altar is within reach (and there is an item to test), run the
# worshipper; otherwise explore level after level with select_skill.


def perform_task(self, current_skill, dungeon_depth, branch_number,
                 merchant_precondition=False, worshipper_precondition=False):
    if worshipper_precondition:
        return "worshipper"
    return self.select_skill(current_skill, dungeon_depth,
                             merchant_precondition, worshipper_precondition)
