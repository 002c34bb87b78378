"""Prompts of the code-generation loop (spec §6.1, §12.1), in our own words.

The first prompt holds, in order: the method to write and the skills with their one-line
descriptions; how the code is called (arguments, attributes the game keeps up to date, the
sandbox rules); the class written before (the built-in exploration helpers, with the task's
starting values and an empty ``perform_task``); the task and its layout hints; the request to
use the two helpers; the unit-test scaffold to complete (simulated depth and branch); the
chain-of-thought questions; and the answer format (the class and the test in one python
block). The check prompt sends the test's output back with a yes/no question; the rewrite
prompt asks for a line-by-line reflection and a new version.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mmotif.skills.code_policy import builtin_source

__all__ = [
    "PlanSpec",
    "SYSTEM_PROMPT",
    "check_prompt",
    "failure_prompt",
    "initial_prompt",
    "initial_values_source",
    "rewrite_prompt",
    "shown_class",
    "skill_lines",
    "unit_test_scaffold",
]

SYSTEM_PROMPT = "You are a helpful assistant."
PLACEHOLDER = "[all conditions needed to complete the task]"


@dataclass(frozen=True)
class PlanSpec:
    """What the coder is asked: the instruction and everything that goes with it."""

    instruction: str
    skills: Sequence[tuple[str, str]]                  # (name, one-line description)
    hints: Sequence[str] = ()
    initial_values: Mapping[str, int] = field(default_factory=lambda: {"max_depth": 5,
                                                                        "discoverer_skill_steps": 500})
    attributes: Mapping[str, str] = field(default_factory=dict)   # env-kept attributes
    task_name: str = ""
    composite: bool = False

    @classmethod
    def for_task(cls, task, skills=None, instruction: str | None = None) -> PlanSpec:
        from mmotif.skills.specs import SkillSet

        skills = skills or SkillSet()
        return cls(
            instruction=instruction or task.instruction,
            skills=tuple((s.name, s.description) for s in skills.skills),
            hints=tuple(task.hints), initial_values=dict(task.initial_values),
            attributes=dict(task.attributes), task_name=task.name, composite=task.kind == "composite",
        )

    @classmethod
    def free(cls, instruction: str, skills=None) -> PlanSpec:
        from mmotif.skills.specs import SkillSet

        skills = skills or SkillSet()
        return cls(instruction=instruction, skills=tuple((s.name, s.description) for s in skills.skills))


def initial_values_source(spec: PlanSpec, call_own: bool = False) -> str:
    """A `set_initial_values` fragment with the task's starting values (spec §6.1, §10.2):
    the one the reference policies get (:func:`mmotif.tasks.base.starting_values_source`).
    With `call_own`, the generated class's own starting values (renamed
    `task_initial_values`) are set first, so attributes the LLM introduced exist too.
    """
    from mmotif.tasks.base import starting_values_source   # mmotif.tasks imports NLE

    return starting_values_source(spec.initial_values, spec.attributes, call_own)


def shown_class(spec: PlanSpec) -> str:
    """The class the coder starts from: exploration helpers, the task's starting values and
    an empty `perform_task`."""
    source = builtin_source("exploration")
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    lines = source.splitlines()
    keep = [f"class {cls.name}:"]
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "perform_task":
            continue
        start = node.lineno - 1 - len(node.decorator_list)
        keep.extend(lines[start:node.end_lineno])
        keep.append("")
    keep.extend(textwrap.indent(initial_values_source(spec), "    ").splitlines())
    keep += ["", "    def perform_task(self, current_skill, dungeon_depth, branch_number,",
             "                     merchant_precondition, worshipper_precondition):",
             "        # to be written", "        pass"]
    return "\n".join(keep) + "\n"


def unit_test_scaffold(spec: PlanSpec, condition: str = PLACEHOLDER) -> str:
    attrs = "".join(f"    # simulate how the game changes player.{name} ({desc}) here\n"
                    for name, desc in spec.attributes.items())
    shown = "".join(f", {name} = {{player.{name}}}" for name in spec.attributes)
    return f'''# Starting conditions
skill = "discoverer"
dungeon_depth = 1
branch_number = 0
branch_depth = 2  # the game decides it (2, 3 or 4); perform_task reads it as self.branch_depth

player = NetHackPlayer()
player.set_initial_values()
player.branch_depth = branch_depth

for turn in range(20):
    print(f"Turn {{turn + 1}}: Skill = {{skill}}, Dungeon depth = {{dungeon_depth}}, Branch Number = {{branch_number}}{shown}")

    if {condition}:
        print("Task completed!")
        break

    merchant_precondition = False
    worshipper_precondition = False
{attrs}
    skill = player.perform_task(skill, dungeon_depth, branch_number,
                                merchant_precondition, worshipper_precondition)

    # the game updates the depth: one turn runs the chosen skill to its end
    if skill == "descender":
        dungeon_depth += 1
    elif skill == "ascender" and dungeon_depth > 1:
        dungeon_depth -= 1

    # a descent from branch_depth lands in either branch; climbing out of the Mines
    # returns to the Dungeons of Doom
    if skill == "descender" and dungeon_depth == branch_depth + 1 and branch_number == 0:
        branch_number = random.choice([0, 2])
    elif skill == "ascender" and dungeon_depth == branch_depth and branch_number == 2:
        branch_number = 0
'''


def skill_lines(skills: Sequence[tuple[str, str]]) -> str:
    """One line per skill: its name and its one-line description."""
    return "\n".join(f"- {name}: {description}" for name, description in skills)


def initial_prompt(spec: PlanSpec) -> str:
    names = ", ".join(f'"{name}"' for name, _ in spec.skills)
    attrs = ""
    if spec.attributes:
        attrs = ("\nThe game keeps these attributes of the player up to date before every call "
                 "(read them, do not compute them):\n"
                 + "\n".join(f"- self.{name}: {desc}" for name, desc in spec.attributes.items()) + "\n")
    hints = "".join(f"\n{h}" for h in spec.hints)
    composite = ""
    if spec.composite:
        composite = ("\nThis task has several goals in sequence. Decide whether the player needs extra "
                     "attributes to remember progress. In the unit test (not in perform_task), add "
                     "lines that simulate how the game changes each attribute the game keeps up to "
                     "date, and print their values every turn.\n")
    return f"""You are to write the method "perform_task" of the class NetHackPlayer, which chooses the skill a NetHack player runs next. The skills are {{{names}}}:
{skill_lines(spec.skills)}

How your method is used: the chosen skill runs until it ends (the descender after going down one level, the ascender after going up one level, the discoverer after exploring for a while, the merchant and the worshipper when the shopkeeper or altar is out of reach). Each time a skill ends, the game calls
    perform_task(self, current_skill, dungeon_depth, branch_number, merchant_precondition, worshipper_precondition)
and runs the skill whose name it returns. branch_number is 0 in the Dungeons of Doom and 2 in the Gnomish Mines. merchant_precondition (worshipper_precondition) is True when a shopkeeper (an altar) is within reach and the player carries an item to sell (to test). self.branch_depth is the level of the Gnomish Mines branch (-2 while unknown).
{attrs}
Rules for the code: plain Python; no import statements (a `random` object with choice, randint, random, uniform and shuffle is already available); no names starting with an underscore; no files. The class must be constructible without arguments, and every method must return quickly.

Previously, you wrote this class, which explores the first levels of the dungeon:
###
{shown_class(spec)}###

The task: {spec.instruction}{hints}

Write "perform_task" so that the player carries out the task. Use the existing methods where they help: "reach_gnomish_mines" brings the player from the Dungeons of Doom into the Gnomish Mines, and "reach_dungeons_of_doom" brings the player from the Gnomish Mines back to the Dungeons of Doom.
{composite}
Your code will be run with this unit test, which simulates the game. Complete it: replace {PLACEHOLDER} with the condition that says the task is done.
###
{unit_test_scaffold(spec)}###

Before writing the code, write a few questions about the assignment and answer them. Say what you can and cannot control in the game. State your strategy and the output you expect from the unit test.

Then give the complete class NetHackPlayer, with all its methods, followed by the unit test, in one ```python code block."""


def check_prompt(spec: PlanSpec, trace: str) -> str:
    return f"""Here is the output of the unit test:
###
{trace}
###
Remember the task: {spec.instruction} In the unit test one turn stands for a whole skill run: for example, one turn of the discoverer explores a whole level.

Does the output look correct for the task? Start your answer with yes or no, then explain why. Do not write any code."""


def rewrite_prompt(answer: str) -> str:
    return f"""Your verdict was:
###
{answer.strip()}
###
Reflect line by line on the code and on the output of the unit test, find what is wrong and fix it. Then give the complete class NetHackPlayer and the unit test again, in one ```python code block."""


def failure_prompt(problem: str) -> str:
    return f"""Your code could not be used:
###
{problem.strip()}
###
Find the cause and fix it, keeping to the rules for the code (no imports, no names starting with an underscore, a class constructible without arguments). Then give the complete class NetHackPlayer and the unit test again, in one ```python code block."""
