# Reference policy over skills for the tasks "Price Identified" and "Transactions" (spec §12.2),
# written for mmotif.
#
# Package data: a fragment of the NetHackPlayer class body, combined after
# builtin/exploration.py and builtin/initiation_termination.py; set_initial_values
# is generated from the task's data (mmotif.tasks.reference). Never imported.
#
# Strategy: whenever a shopkeeper is within reach (and there is something to sell), run
# the merchant; otherwise sweep the levels of the Dungeons of Doom, where shops are.


def perform_task(self, current_skill, dungeon_depth, branch_number,
                 merchant_precondition=False, worshipper_precondition=False):
    if merchant_precondition:
        return "merchant"
    return self.reach_dungeons_of_doom(current_skill, dungeon_depth, branch_number,
                                       merchant_precondition, worshipper_precondition)
