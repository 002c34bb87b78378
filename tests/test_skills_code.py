"""Phases 2 and 3 from the coder: initiation/termination and the training-time policy over skills.

The fast tests drive the shared refinement loop with a scripted stand-in for the coder (its
`chat` returns prepared replies in order) for the control flow; the sandbox, the rlimited
child and the LLM-written unit tests they run are real. The slow test runs the embedded
coder and measures how often it passes its checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_llm import ScriptedLLM

from mmotif.codegen import skill_prompts
from mmotif.codegen.generate import combine_generated
from mmotif.codegen.prompts import PlanSpec
from mmotif.codegen.skills_code import (
    GENERATED_FILE, cmd_skills_code, generate_skills_code,
    initiation_termination_of, resolve_training_policy,
)
from mmotif.config import load_config
from mmotif.skills.build import training_policy
from mmotif.skills.code_policy import CodePolicy, SurroundingsView
from mmotif.skills.specs import SkillSet

SKILLS = SkillSet()

# phase 2: the built-in rules, written another way (a helper method, a generated marker)
SKILL_FUNCTIONS = '''class NetHackPlayer:
    def has_loot(self, view):
        return view.new_items >= 1

    def skill_precondition(self, skill, view):
        if skill == "worshipper":
            return self.has_loot(view) and view.sees("_", 7)
        if skill == "merchant":
            return self.has_loot(view) and view.sees("@", 15)
        return True

    def skill_termination(self, skill, skill_time, depth, start_depth, **preconditions):
        if True in preconditions.values():
            return True
        if skill == "discoverer":
            return skill_time >= self.discoverer_skill_steps
        if skill == "descender":
            return depth > start_depth
        if skill == "ascender":
            return depth < start_depth
        return skill_time >= 20 * self.discoverer_skill_steps
'''

MORE_CASES = '''
precondition_cases = [("merchant", FakeView([("@", 15)], 2), True), ("merchant", FakeView([("@", 7)], 2), False)]
for skill, view, expected in precondition_cases:
    got = player.skill_precondition(skill, view)
    print(f"skill_precondition({skill}) = {got}, expected {expected}")
    assert got == expected
'''

SWEEP = '''class NetHackPlayer:
    def __init__(self):
        self.going_down = True
        self.max_depth = 3
        self.branch_depth = -2

    def select_skill(self, current_skill, dungeon_depth, merchant_precondition, worshipper_precondition):
        if merchant_precondition:
            return "merchant"
        if worshipper_precondition:
            return "worshipper"
        if current_skill != "discoverer":
            return "discoverer"
        if self.going_down and dungeon_depth >= self.max_depth:
            self.going_down = False
        elif not self.going_down and dungeon_depth <= 1:
            self.going_down = True
        return "descender" if self.going_down else "ascender"
'''

BRANCHES = SWEEP + '''
    def reach_gnomish_mines(self, current_skill, dungeon_depth, branch_number, merchant_precondition,
                            worshipper_precondition):
        if branch_number == 0 and dungeon_depth == self.branch_depth:
            return "descender"
        if branch_number == 0 and dungeon_depth == self.branch_depth + 1:
            return "ascender"
        return self.select_skill(current_skill, dungeon_depth, merchant_precondition, worshipper_precondition)

    def reach_dungeons_of_doom(self, current_skill, dungeon_depth, branch_number, merchant_precondition,
                               worshipper_precondition):
        if dungeon_depth == self.branch_depth:
            return "ascender" if branch_number == 2 else "descender"
        if branch_number == 2 and dungeon_depth == self.branch_depth + 1:
            return "ascender"
        return self.select_skill(current_skill, dungeon_depth, merchant_precondition, worshipper_precondition)
'''


def reply(code: str, test: str = "") -> str:
    return ("Q: what ends the descender? A: a deeper level.\n\n"
            f"```python\nimport random\n\n{code}\n{test}```\nThe test prints every case.")


def scaffold_reply(code: str, scaffold: str, extra: str = "") -> str:
    return reply(code, scaffold.replace(skill_prompts.DEPTH_PLACEHOLDER, "3") + extra)


PRE = tuple(sorted(SKILLS.with_precondition()))  # merchant, worshipper
PHASE_2 = scaffold_reply(SKILL_FUNCTIONS, skill_prompts.skill_functions_scaffold(PRE), MORE_CASES)
PHASE_3A = scaffold_reply(SWEEP, skill_prompts.sweep_scaffold(PRE))
PHASE_3B = scaffold_reply(BRANCHES, skill_prompts.branches_scaffold(PRE))
ALL_ACCEPTED = [PHASE_2, "Yes, every rule holds.", PHASE_3A, "Yes.", PHASE_3B, "yes: both branches."]


def quiet(_line):
    pass


def test_prompts_carry_the_rules_and_the_scaffolds():
    names = tuple((s.name, s.description) for s in SKILLS.skills)
    phase2 = skill_prompts.skill_functions_prompt(names, PRE)
    for part in ('"_" drawn in colour 7', '"@" drawn in colour 15', "self.discoverer_skill_steps",
                 "depth is greater than start_depth", "any of the preconditions is True",
                 "class FakeView", "assert got == expected", "one ```python code block"):
        assert part in phase2, part
    sweep = skill_prompts.sweep_prompt(names, PRE)
    assert "self.max_depth" in sweep and skill_prompts.DEPTH_PLACEHOLDER in sweep and "range(30)" in sweep
    branches = skill_prompts.branches_prompt(names, PRE, "class NetHackPlayer:\n    pass\n")
    assert "probability 0.5" in branches and "random.choice([0, 2])" in branches


def test_all_three_accepted_on_the_first_try(tmp_path):
    coder = ScriptedLLM(ALL_ACCEPTED)
    code = generate_skills_code(coder, SKILLS, record_dir=tmp_path, log=quiet)
    assert code.fully_generated and not coder.replies and not code.warnings()
    assert all(len(r.iterations) == 1 for r in code.results.values())
    # the generated parts are the ones used: its helper, its sweep attribute, its branch code
    assert "def has_loot" in code.source and "self.going_down" in code.source
    assert code.source.count("def reach_gnomish_mines") == 1
    policy = CodePolicy.from_source(code.source, SKILLS.names, SKILLS.with_precondition(), seed=0)
    policy.new_episode()
    assert policy.initiation("merchant", SurroundingsView.from_rows(["@"], 15, 1))
    assert not policy.initiation("merchant", SurroundingsView.from_rows(["@"], 15, 0))
    # each check question carried its own test's trace; each record holds its transcript
    assert "skill_termination(descender" in coder.calls[1][-1]["content"]
    assert "Turn 30:" in coder.calls[3][-1]["content"]
    assert "reach_dungeons_of_doom:" in coder.calls[5][-1]["content"]
    records = sorted(tmp_path.glob("*.json"))
    assert {json.loads(p.read_text())["phase"] for p in records} == {"initiation_termination", "select_skill",
                                                                     "branches"}
    assert all(json.loads(p.read_text())["accepted"] for p in records)
    # the stage-2 prompt shows the accepted stage-1 class
    assert "self.going_down" in coder.calls[4][1]["content"]


def test_a_failing_unit_test_is_fed_back_and_the_rewrite_accepted(tmp_path):
    wrong = SKILL_FUNCTIONS.replace("return depth > start_depth", "return depth < start_depth")
    coder = ScriptedLLM([scaffold_reply(wrong, skill_prompts.skill_functions_scaffold(PRE)), PHASE_2, "Yes.",
                           *ALL_ACCEPTED[2:]])
    code = generate_skills_code(coder, SKILLS, record_dir=tmp_path, log=quiet)
    first, second = code.results["initiation_termination"].iterations
    assert first["test"]["status"] == "error" and "AssertionError" in first["problem"]
    assert "skill_termination(descender" in first["test"]["output"]          # the trace up to the failure
    assert "AssertionError" in coder.calls[1][-1]["content"]                 # what the coder was told
    assert second["accepted"] and code.fully_generated


@pytest.mark.parametrize("bad, words", [
    (SKILL_FUNCTIONS.replace("        if True in", "        import os\n        if True in"),
     "import statements are not allowed"),
    (SKILL_FUNCTIONS.replace('        if skill == "discoverer":\n',
                             '        while True:\n            pass\n        if skill == "discoverer":\n'),
     "time budget"),
    (SKILL_FUNCTIONS.replace("return skill_time >= 20 *", "return None and 20 *"), "expected True or False"),
])
def test_unsafe_or_looping_code_is_refused_and_the_builtin_used_loudly(tmp_path, bad, words):
    lines = []
    coder = ScriptedLLM([reply(bad)] * 2 + ALL_ACCEPTED[2:])
    code = generate_skills_code(coder, SKILLS, record_dir=tmp_path, log=lines.append, max_rewrites=1)
    result = code.results["initiation_termination"]
    assert not result.accepted and len(result.iterations) == 2 and not coder.replies
    assert all(words in it["policy_check"] for it in result.iterations), result.iterations[0]["policy_check"]
    assert all("test" not in it for it in result.iterations)                # refused before any test ran
    assert code.origin == {"initiation_termination": "built-in", "select_skill": "generated",
                           "branches": "generated"}
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1 and "BUILT-IN initiation_termination" in warnings[0]
    assert result.record_path in warnings[0] and Path(result.record_path).is_file()
    assert "def has_loot" not in code.source and 'view.sees("_", 7)' in code.source


def test_combine_generated_uses_generated_initiation_termination():
    from tests.test_codegen import CLASS_WITH_ARGUMENTS, GNOMISH

    fragment = initiation_termination_of(SKILL_FUNCTIONS)
    assert "def has_loot" in fragment and "def skill_termination" in fragment
    source, _ = combine_generated(CLASS_WITH_ARGUMENTS, PlanSpec.for_task(GNOMISH), initiation_termination=fragment)
    assert "def has_loot" in source
    builtin, _ = combine_generated(CLASS_WITH_ARGUMENTS, PlanSpec.for_task(GNOMISH))
    assert "def has_loot" not in builtin


def test_run_config_generate_falls_back_loudly_and_reuses_the_run_s_code(tmp_path):
    cfg = load_config(overrides={"env": {"training_policy": "generate"}, "paths": {"run_dir": str(tmp_path)}})
    with pytest.raises(ValueError, match="resolved by `mmotif run`"):
        training_policy(cfg, seed=0)
    lines = []
    coder = ScriptedLLM([PHASE_2, "Yes.", PHASE_3A, "No, it never goes up.", *[PHASE_3A, "No."] * 3,
                           PHASE_3B, "Yes."])
    resolved = resolve_training_policy(cfg, llm=coder, log=lines.append)
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1 and "BUILT-IN select_skill" in warnings[0]
    record = warnings[0].split("Record: ")[1]
    assert Path(record).parent == tmp_path / "skills_code" / "generations" and Path(record).is_file()
    written = (tmp_path / "skills_code" / GENERATED_FILE).read_text()
    assert resolved.env.training_policy_code == written and written.startswith("# mmotif skills-code: PARTLY")
    policy = training_policy(resolved, seed=0)
    assert policy.new_episode() == "discoverer"
    assert "def has_loot" in written and "self.going_down" not in written
    # the config carries the code (actors read no file); a second start reuses the run's file
    again = []
    assert resolve_training_policy(cfg, llm=None, log=again.append).env.training_policy_code == written
    assert sum(line.startswith("WARNING") and "select_skill: built-in" in line for line in again) == 1


def test_cmd_skills_code_writes_a_file_the_config_can_name(tmp_path, capsys):
    from mmotif.cli import build_parser

    args = build_parser(["skills-code"]).parse_args(["skills-code", "--out", str(tmp_path)])
    assert args.func is cmd_skills_code
    assert cmd_skills_code(args, llm=ScriptedLLM(ALL_ACCEPTED)) == 0
    path = tmp_path / GENERATED_FILE
    assert path.read_text().startswith("# mmotif skills-code: generated")
    cfg = load_config(overrides={"env": {"training_policy": str(path)}})
    assert training_policy(cfg, seed=0).new_episode() == "discoverer"
    resolved = resolve_training_policy(cfg, log=quiet)
    assert resolved.env.training_policy_code == path.read_text()
    assert str(path) in capsys.readouterr().out
    # a task policy planned for that config runs the skills under the generated rules
    from test_codegen import GOOD_CLASS, reply_with

    argv = ["plan", "--task", "gnomish", "--set", f"env.training_policy={path}", "--out", str(tmp_path / "plans")]
    args = build_parser(argv).parse_args(argv)
    assert args.func(args, llm=ScriptedLLM([reply_with(GOOD_CLASS), "Yes."])) == 0
    assert "def has_loot" in (tmp_path / "plans" / "gnomish.py").read_text()
    argv[argv.index(f"env.training_policy={path}")] = "env.training_policy=builtin:exploration"
    args = build_parser(argv).parse_args(argv)
    assert args.func(args, llm=ScriptedLLM([reply_with(GOOD_CLASS), "Yes."])) == 0
    assert "def has_loot" not in (tmp_path / "plans" / "gnomish.py").read_text()


# ---------------------------------------------------------------------------------------
# the real embedded coder
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_embedded_coder_writes_the_skills_code(tmp_path):
    """The embedded SmolLM2-135M writes phases 2 and 3 on the CPU, one attempt per part, short
    answers (120 tokens, ~40 s: the model does not write passing code at any length — 0 of 3
    parts at 300 tokens, and the 0.5B coder 0 of 4 generations in ~4 min, see the README — so
    what runs here is the real path end to end, not the model's skill). Every part ends accepted
    or falls back to its built-in with one warning, every round stored, and the combined policy
    loads. Prints the pass rate."""
    from mmotif.llm.embedded import EmbeddedBackend

    try:
        llm = EmbeddedBackend("smollm2-135m", num_threads=2, dtype="float32")
    except Exception as err:                                # no cached model and no network
        pytest.skip(f"embedded model unavailable: {err}")
    lines = []
    code = generate_skills_code(llm, SKILLS, record_dir=tmp_path, max_rewrites=0, max_tokens=120,
                                temperature=0.2, log=lambda line: (lines.append(line), print(line)))
    CodePolicy.from_source(code.source, SKILLS.names, SKILLS.with_precondition(), seed=0)
    for name, result in code.results.items():
        record = json.loads(Path(result.record_path).read_text())
        assert len(record["iterations"]) == 1 and record["model"] == "embedded:smollm2-135m"
        assert result.accepted == (code.origin[name] == "generated")
        if not result.accepted:
            assert sum(result.record_path in line for line in lines if line.startswith("WARNING")) == 1
    rounds = [it for r in code.results.values() for it in r.iterations]
    tests_ran = sum(it.get("test", {}).get("status") == "ok" for it in rounds)
    print(f"embedded coder: {sum(r.accepted for r in code.results.values())}/3 parts accepted; "
          f"{tests_ran}/{len(rounds)} generations ran their unit test to the end; "
          + "; ".join(f"{n}: {r.reason}" for n, r in code.results.items()))
