# The training-time policy over skills (spec §6.1, §6.2), written for mmotif.
#
# Package data: mmotif loads this file as text and runs it in the code-policy sandbox
# (mmotif.sandbox); it is never imported. CodePolicy.exploration() appends the
# fragments initiation_termination.py and initial_values.py to this class body.
#
# Schedule: explore a level with the discoverer, then change level; sweep the depths
# 1 .. max_depth and back up, over and over. Merchant / worshipper take over whenever
# their preconditions hold. perform_task picks the branch (Gnomish Mines or Dungeons of
# Doom) with the per-episode coin flip `self.mines`.


class NetHackPlayer:
    def __init__(self):
        self.direction = "down"     # which way the level sweep is heading
        self.branch_depth = -2      # Mines-branch level; the env overwrites it once known
        self.max_depth = -1         # set by set_initial_values

    def select_skill(self, current_skill, dungeon_depth,
                     merchant_precondition=False, worshipper_precondition=False):
        # an opportunity to trade or to use an altar comes first
        if merchant_precondition:
            return "merchant"
        if worshipper_precondition:
            return "worshipper"
        # a level has been explored: move one level along the sweep
        if current_skill == "discoverer":
            if self.direction == "down":
                if dungeon_depth < self.max_depth:
                    return "descender"
                self.direction = "up"
                return "ascender"
            if dungeon_depth > 1:
                return "ascender"
            self.direction = "down"
            return "descender"
        # after a level change (or anything else): explore the level
        return "discoverer"

    def reach_gnomish_mines(self, current_skill, dungeon_depth, branch_number,
                            merchant_precondition=False, worshipper_precondition=False):
        in_main_dungeon = branch_number == 0
        if in_main_dungeon and dungeon_depth == self.branch_depth:
            # the branch level: go down, hoping for the Mines staircase
            return "descender"
        if in_main_dungeon and dungeon_depth == self.branch_depth + 1:
            # the main staircase was taken: climb back and try again
            return "ascender"
        return self.select_skill(current_skill, dungeon_depth,
                                 merchant_precondition, worshipper_precondition)

    def reach_dungeons_of_doom(self, current_skill, dungeon_depth, branch_number,
                               merchant_precondition=False, worshipper_precondition=False):
        in_mines = branch_number == 2
        if dungeon_depth == self.branch_depth:
            if in_mines:
                return "ascender"
            return "descender"
        if in_mines and dungeon_depth == self.branch_depth + 1:
            # the Mines staircase was taken: climb back and try again
            return "ascender"
        return self.select_skill(current_skill, dungeon_depth,
                                 merchant_precondition, worshipper_precondition)

    def perform_task(self, current_skill, dungeon_depth, branch_number,
                     merchant_precondition=False, worshipper_precondition=False):
        if self.mines:
            return self.reach_gnomish_mines(current_skill, dungeon_depth, branch_number,
                                            merchant_precondition, worshipper_precondition)
        return self.reach_dungeons_of_doom(current_skill, dungeon_depth, branch_number,
                                           merchant_precondition, worshipper_precondition)
