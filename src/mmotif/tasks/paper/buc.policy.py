# Reference policy over skills for the task "BUC Identified" (spec §12.2), written for mmotif.
#
# Package data: a fragment of the NetHackPlayer class body, combined after
# builtin/exploration.py and builtin/initiation_termination.py. Never imported.
#
# Strategy: whenever an altar is within reach (and there is an item to test), run the
# worshipper; otherwise explore level after level with select_skill.


def set_initial_values(self):
    self.skill = "discoverer"
    self.max_depth = 5
    self.discoverer_skill_steps = 500
    self.merchant_skill_steps = 20 * self.discoverer_skill_steps
    self.worshipper_skill_steps = 20 * self.discoverer_skill_steps


def perform_task(self, current_skill, dungeon_depth, branch_number,
                 merchant_precondition=False, worshipper_precondition=False):
    if worshipper_precondition:
        return "worshipper"
    return self.select_skill(current_skill, dungeon_depth,
                             merchant_precondition, worshipper_precondition)
