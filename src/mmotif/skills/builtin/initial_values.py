# Per-episode starting values of the training-time policy (spec §6.1, "Combination"),
# written for mmotif.
#
# Package data: a fragment of the NetHackPlayer class body. `random` is the sandbox's
# seeded generator (choice, randint, random, uniform, shuffle), not the stdlib module.


def set_initial_values(self):
    self.skill = "discoverer"                 # the first skill of every episode
    self.max_depth = random.choice([2, 3, 4])
    self.mines = random.randint(0, 1)         # 1: sweep the Gnomish Mines, 0: the main dungeon
    self.discoverer_skill_steps = 500         # game turns per explored level
    self.merchant_skill_steps = 10000
    self.worshipper_skill_steps = 10000
