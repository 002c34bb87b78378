"""Prompts for the code of the skills themselves (spec §5, §6.1), in our own words.

Phase 2: the initiation and termination functions of the skills (`skill_precondition`,
`skill_termination`), from the skills' descriptions and the rules below, with a unit-test
scaffold of expected results that the coder completes. Phase 3: the training-time policy
over skills in two stages, as in the method: `select_skill` (explore a level, then sweep the
depths down to `max_depth` and back up; merchant/worshipper first when they may start), then
`reach_gnomish_mines` / `reach_dungeons_of_doom` on top of it (the Mines branch).
The rewrite and failure prompts are the shared ones of :mod:`mmotif.codegen.prompts`.
"""

from __future__ import annotations

from mmotif.codegen.prompts import skill_lines

__all__ = [
    "DEPTH_PLACEHOLDER",
    "ENTRY_RULES",
    "END_RULES",
    "branches_check_prompt",
    "branches_prompt",
    "branches_scaffold",
    "skill_functions_check_prompt",
    "skill_functions_prompt",
    "skill_functions_scaffold",
    "sweep_check_prompt",
    "sweep_prompt",
    "sweep_scaffold",
]

DEPTH_PLACEHOLDER = "[the deepest level of the sweep]"

# Initiation and termination of the paper's skills, in words (spec §5.2, §5.3); a skill of a
# user's own list that is not here is described to the coder by its description alone.
ENTRY_RULES = {
    "worshipper": 'it may start only when the player carries at least one new item and an altar '
                  '(the character "_" drawn in colour 7) is in view',
    "merchant": 'it may start only when the player carries at least one new item and a shopkeeper '
                '(the character "@" drawn in colour 15, white) is in view',
}
END_RULES = {
    "discoverer": "it ends once skill_time reaches self.discoverer_skill_steps game turns",
    "descender": "it ends once depth is greater than start_depth (one level down)",
    "ascender": "it ends once depth is smaller than start_depth (one level up)",
    "worshipper": "it ends after 20 * self.discoverer_skill_steps game turns",
    "merchant": "it ends after 20 * self.discoverer_skill_steps game turns",
}

_CODE_RULES = ("Rules for the code: plain Python; no import statements (a `random` object with choice, "
               "randint, random, uniform and shuffle is already available); no names starting with an "
               "underscore; no files. The class must be constructible without arguments, and every "
               "method must return quickly.")

_THINK = ("Before writing the code, write a few questions about the assignment and answer them. "
          "State your plan and the output you expect from the unit test.")


_SIMULATES = ", which simulates the game: one turn stands for one whole skill run."


def _closing(about_test: str, scaffold: str, methods: str) -> str:
    """The end of every first prompt: code rules, the unit test, thinking first, answer format."""
    return f"""{_CODE_RULES}

Your code will be run with this unit test{about_test}
###
{scaffold}###

{_THINK}

Then give the class NetHackPlayer with {methods}, followed by the unit test, in one ```python code block."""


def _skill_rules(skills, with_precondition) -> str:
    lines = []
    for name, description in skills:
        entry = ENTRY_RULES.get(name, "it has an initiation condition; derive it from the description") \
            if name in with_precondition else "it may always start"
        end = END_RULES.get(name, "it ends when its description says its job is done")
        lines.append(f"- {name} ({description}): {entry}; {end}.")
    return "\n".join(lines)


def _keywords(with_precondition) -> str:
    return ", ".join(f"{s}_precondition" for s in with_precondition)


# ---------------------------------------------------------------------------------------
# Phase 2: initiation and termination
# ---------------------------------------------------------------------------------------
def skill_functions_scaffold(with_precondition) -> str:
    none = "{" + ", ".join(f'"{s}_precondition": False' for s in with_precondition) + "}"
    first = with_precondition[0] if with_precondition else None
    pre_cases = ""
    if first in ENTRY_RULES:
        char, colour = ("_", 7) if first == "worshipper" else ("@", 15)
        pre_cases = (f'    ("{first}", FakeView([("{char}", {colour})], 1), True),\n'
                     f'    ("{first}", FakeView([("{char}", {colour})], 0), False),\n')
    return f'''class FakeView:
    # what skill_precondition sees: the (character, colour) cells around the hero
    def __init__(self, cells, new_items):
        self.cells = cells
        self.new_items = new_items

    def sees(self, char, color):
        return (char, color) in self.cells


player = NetHackPlayer()
player.set_initial_values()  # sets player.discoverer_skill_steps (500)
no_precondition = {none}

# (skill, view, expected result): add cases until every initiation rule is checked
precondition_cases = [
{pre_cases}]
for skill, view, expected in precondition_cases:
    got = player.skill_precondition(skill, view)
    print(f"skill_precondition({{skill}}, cells={{view.cells}}, new_items={{view.new_items}}) = {{got}}, expected {{expected}}")
    assert got == expected

# (skill, skill_time, depth, start_depth, preconditions, expected result): add cases until
# every termination rule is checked
termination_cases = [
    ("descender", 10, 3, 2, no_precondition, True),
    ("discoverer", 10, 1, 1, no_precondition, False),
]
for skill, skill_time, depth, start_depth, preconditions, expected in termination_cases:
    got = player.skill_termination(skill, skill_time, depth, start_depth, **preconditions)
    print(f"skill_termination({{skill}}, skill_time={{skill_time}}, depth={{depth}}, start_depth={{start_depth}}, {{preconditions}}) = {{got}}, expected {{expected}}")
    assert got == expected
'''


def skill_functions_prompt(skills, with_precondition) -> str:
    names = ", ".join(f'"{name}"' for name, _ in skills)
    keywords = _keywords(with_precondition)
    return f"""You are to write two methods of the class NetHackPlayer, which runs the skills of a NetHack player. The skills are {{{names}}}:
{skill_lines(skills)}

The two methods:
1. skill_precondition(self, skill, view) -> bool, the initiation function. It is called only for the skills {", ".join(with_precondition) or "(none)"} and says whether the skill may start now. view.sees(char, color) says whether the character char drawn in NetHack colour color (0-15) is in the 7x7 window around the hero (the hero's own cell left out); view.new_items is the number of items the player picked up that are neither food nor coins.
2. skill_termination(self, skill, skill_time, depth, start_depth, **preconditions) -> bool, the termination function. It is called after every game step for the running skill and says whether it ends now. skill_time is the number of game turns since the skill started; depth is the current dungeon level and start_depth the level when the skill started; preconditions holds the keywords {keywords or "(none)"}, each True when that skill may start now.

The rules:
{_skill_rules(skills, with_precondition)}
- Whatever skill runs, it ends as soon as any of the preconditions is True, so that the player can switch to the skill that may start.

self.discoverer_skill_steps is set by set_initial_values(), which already exists: do not write it. Write no __init__ either: the two methods keep no state of their own.

{_closing(". Complete it: add cases to both lists until every rule above is checked, each with the result "
           "the rule gives.", skill_functions_scaffold(with_precondition), "the two methods")}"""


def skill_functions_check_prompt(skills, with_precondition, trace: str) -> str:
    return f"""Here is the output of the unit test:
###
{trace}
###
The rules were:
{_skill_rules(skills, with_precondition)}
- Whatever skill runs, it ends as soon as any of the preconditions is True.

Do the results follow the rules, and do the cases check every rule? Start your answer with yes or no, then explain why. Do not write any code."""


# ---------------------------------------------------------------------------------------
# Phase 3, stage A: select_skill
# ---------------------------------------------------------------------------------------
_SWEEP = ("Explore each level in full with the discoverer before leaving it. Then move one level: go down "
          "one level at a time until self.max_depth, then back up one level at a time to level 1, then down "
          "again, and so on. Whenever the merchant or the worshipper may start (its precondition is True), "
          "choose it first.")


def sweep_scaffold(with_precondition) -> str:
    args = "".join(f", {s}_precondition" for s in with_precondition)
    falses = "".join(f"    {s}_precondition = False\n" for s in with_precondition)
    return f'''skill = "discoverer"
dungeon_depth = 1

player = NetHackPlayer()
player.set_initial_values()
player.max_depth = {DEPTH_PLACEHOLDER}

for turn in range(30):
    print(f"Turn {{turn + 1}}: Skill = {{skill}}, Dungeon depth = {{dungeon_depth}}")
{falses}    skill = player.select_skill(skill, dungeon_depth{args})
    # one turn runs the chosen skill to its end
    if skill == "descender":
        dungeon_depth += 1
    elif skill == "ascender" and dungeon_depth > 1:
        dungeon_depth -= 1
'''


def sweep_prompt(skills, with_precondition) -> str:
    names = ", ".join(f'"{name}"' for name, _ in skills)
    args = "".join(f", {s}_precondition" for s in with_precondition)
    return f"""You are to write the method "select_skill" of the class NetHackPlayer, which chooses the skill a NetHack player runs next while it explores the first levels of the dungeon. The skills are {{{names}}}:
{skill_lines(skills)}

How your method is used: the chosen skill runs until it ends (the descender after going down one level, the ascender after going up one level, the discoverer after exploring the level). Each time a skill ends, the game calls
    select_skill(self, current_skill, dungeon_depth{args})
and runs the skill whose name it returns. Each precondition argument is True when that skill may start now.

The desired strategy: {_SWEEP}

self.max_depth is set before the first call. You may add attributes in __init__ (for example the direction of the sweep); do not write set_initial_values, it exists already.

{_closing(f"{_SIMULATES} Complete it: replace {DEPTH_PLACEHOLDER} with a depth.",
           sweep_scaffold(with_precondition), "__init__ and select_skill")}"""


def sweep_check_prompt(trace: str) -> str:
    return _trace_check(trace, f"The desired strategy was: {_SWEEP} In the unit test one turn stands for a "
                               "whole skill run: one turn of the discoverer explores a whole level.")


def _trace_check(trace: str, reminder: str) -> str:
    return f"""Here is the output of the unit test:
###
{trace}
###
{reminder}

Does the output look correct? Start your answer with yes or no, then explain why. Do not write any code."""


# ---------------------------------------------------------------------------------------
# Phase 3, stage B: the Gnomish Mines branch
# ---------------------------------------------------------------------------------------
_LAYOUT = ("The Dungeons of Doom are branch 0. On level self.branch_depth a second down staircase leads to "
           "the Gnomish Mines (branch 2), whose first level is self.branch_depth + 1. Going down from "
           "self.branch_depth lands in either branch with probability 0.5: the code cannot tell the two "
           "staircases apart. Going up from the first Mines level returns to the Dungeons of Doom.")
_REACH = ('"reach_gnomish_mines": on level self.branch_depth in branch 0, always go down; if that landed on '
          'level self.branch_depth + 1 of branch 0, go back up and try again; inside the Mines, behave like '
          'select_skill. "reach_dungeons_of_doom" is the mirror image: on level self.branch_depth + 1 of the '
          'Mines go up, on level self.branch_depth go down until the descent lands in branch 0; inside the '
          'Dungeons of Doom, behave like select_skill.')


def branches_scaffold(with_precondition) -> str:
    args = "".join(f", {s}_precondition" for s in with_precondition)
    falses = "".join(f"        {s}_precondition = False\n" for s in with_precondition)
    return f'''def play(choose, turns):
    skill = "discoverer"
    dungeon_depth = 1
    branch_number = 0
    for turn in range(turns):
        print(f"Turn {{turn + 1}}: Skill = {{skill}}, Dungeon depth = {{dungeon_depth}}, Branch Number = {{branch_number}}")
{falses}        skill = choose(skill, dungeon_depth, branch_number{args})
        # one turn runs the chosen skill to its end; the game decides the branch
        if skill == "descender":
            if dungeon_depth == player.branch_depth and branch_number == 0:
                branch_number = random.choice([0, 2])
            dungeon_depth += 1
        elif skill == "ascender" and dungeon_depth > 1:
            dungeon_depth -= 1
            if dungeon_depth == player.branch_depth and branch_number == 2:
                branch_number = 0


player = NetHackPlayer()
player.set_initial_values()
player.max_depth = 4
player.branch_depth = 2
print("reach_gnomish_mines:")
play(player.reach_gnomish_mines, 20)
print("reach_dungeons_of_doom:")
play(player.reach_dungeons_of_doom, 20)
'''


def branches_prompt(skills, with_precondition, shown_class: str) -> str:
    args = "".join(f", {s}_precondition" for s in with_precondition)
    return f"""Previously, you wrote this class, which explores the first levels of the NetHack dungeon:
###
{shown_class}###

You are to add two methods to it: reach_gnomish_mines(self, current_skill, dungeon_depth, branch_number{args}) and reach_dungeons_of_doom(self, current_skill, dungeon_depth, branch_number{args}). Each returns the next skill, as select_skill does.

The dungeon: {_LAYOUT}

The desired strategy: {_REACH} Both methods must call select_skill, and they cannot change the branch number: only the game does.

{_closing(_SIMULATES, branches_scaffold(with_precondition),
           "all its methods (__init__, select_skill, reach_gnomish_mines, reach_dungeons_of_doom)")}"""


def branches_check_prompt(trace: str) -> str:
    return _trace_check(trace, f"The dungeon: {_LAYOUT} The desired strategy was: {_REACH} In the unit test "
                               "one turn stands for a whole skill run.")
