# Initiation and termination functions of the paper's five skills (spec §5.2, §5.3),
# written for mmotif.
#
# Package data: a fragment of the NetHackPlayer class body (methods written at top level
# here so the file stays valid Python). CodePolicy.from_parts() indents it into the class.
# `view` is a mmotif.skills.code_policy.SurroundingsView: view.sees(char, color) looks at
# the 7x7 window around the hero (hero excluded); view.new_items counts picked-up items
# that are neither food nor coins.


def skill_precondition(self, skill, view):
    if skill == "worshipper":
        # an altar in sight and something worth identifying
        return view.new_items > 0 and view.sees("_", 7)      # grey '_'
    if skill == "merchant":
        # a shopkeeper in sight and something to sell
        return view.new_items > 0 and view.sees("@", 15)     # white '@'
    return True


def skill_termination(self, skill, skill_time, depth, start_depth, **preconditions):
    # an altar or a shopkeeper within reach interrupts whatever runs, so that the
    # policy over skills can hand control to the worshipper or the merchant
    if any(preconditions.values()):
        return True
    if skill == "discoverer":
        return skill_time >= self.discoverer_skill_steps
    if skill == "descender":
        return depth > start_depth
    if skill == "ascender":
        return depth < start_depth
    if skill == "merchant" or skill == "worshipper":
        return skill_time >= 20 * self.discoverer_skill_steps
    return False
