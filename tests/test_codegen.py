"""Code generation with unit-test refinement.

The fast tests drive the loop with a *scripted stand-in* for the LLM (an object whose
`chat` returns prepared replies in order). It exists only to drive the control flow
(extraction, test runs, check question, rewrites, acceptance, records); the sandbox and the
resource-limited subprocess that run its code are the real ones, and the hostile-code tests
run real hostile code through them. The slow test runs the real embedded LLM.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from fake_llm import ScriptedLLM

from mmotif.codegen import (
    PlanSpec, RunLimits, cmd_plan, combine_generated, extract_code, is_yes, plan,
    run_unit_test, simulate,
)
from mmotif.codegen.prompts import initial_prompt, unit_test_scaffold
from mmotif.sandbox import CodePolicyError
from mmotif.skills.code_policy import CodePolicy
from mmotif.skills.specs import SkillSet
from mmotif.tasks import get_task
from mmotif.cli import add_plan_arguments

GNOMISH = get_task("gnomish")

GOOD_CLASS = '''class NetHackPlayer:
    def __init__(self, max_depth=-1, branch_depth=-2):
        self.max_depth = max_depth
        self.branch_depth = branch_depth
        self.direction = "down"
        self.retries = 0

    def select_skill(self, current_skill, dungeon_depth, merchant_precondition, worshipper_precondition):
        if current_skill == "discoverer":
            if dungeon_depth < self.max_depth:
                return "descender"
            return "ascender"
        return "discoverer"

    def set_initial_values(self):
        self.retries = 0

    def perform_task(self, current_skill, dungeon_depth, branch_number,
                     merchant_precondition, worshipper_precondition):
        if branch_number == 0 and dungeon_depth == self.branch_depth + 1:
            self.retries += 1
            return "ascender"
        if branch_number == 0 and dungeon_depth == self.branch_depth:
            return "descender"
        return self.reach_gnomish_mines(current_skill, dungeon_depth, branch_number,
                                        merchant_precondition, worshipper_precondition)
'''


# as the reference's generated classes: constructor arguments the env used to pass
CLASS_WITH_ARGUMENTS = GOOD_CLASS.replace("max_depth=-1, branch_depth=-2", "max_depth, branch_depth")


def reply_with(code: str, test: str | None = None) -> str:
    test = unit_test_scaffold(PlanSpec.for_task(GNOMISH), "branch_number == 2") if test is None else test
    return ("Questions: what can I control? Only the skill.\nStrategy: descend at the branch level.\n\n"
            f"```python\nimport random\n\n{code}\n{test}```\nThe test should end in the Mines.")


# ---------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------
def test_extract_code_takes_the_first_python_block():
    assert extract_code("a\n```python\nx = 1\n```\n```python\ny = 2\n```") == "x = 1\n"
    assert extract_code("```\nclass NetHackPlayer:\n    pass\n```") == "class NetHackPlayer:\n    pass\n"
    assert extract_code("```text\nhello\n```") is None and extract_code("no code") is None
    assert extract_code("```python\nx = 1\nunterminated") == "x = 1\nunterminated\n"


def test_acceptance_needs_an_answer_that_starts_with_yes():
    for yes in ("Yes", "yes, it is right", "  YES.", "**Yes**, the output ..."):
        assert is_yes(yes), yes
    for no in ("No", "The answer is yes", "yesterday it was", "", "I think yes"):
        assert not is_yes(no), no


def test_prompt_has_every_part():
    spec = PlanSpec.for_task(get_task("goldenexit"))
    prompt = initial_prompt(spec)
    for part in ('"discoverer"', "Explores the current dungeon level", "def reach_gnomish_mines",
                 "def perform_task", "self.gold_pieces", "[all conditions needed to complete the task]",
                 "random.choice([0, 2])", "write a few questions", "what you can and cannot control",
                 "one ```python code block", "self.max_depth = 3", "simulate how the game changes"):
        assert part in prompt, part


def test_combine_generated_makes_a_deployable_policy():
    source, policy = combine_generated(CLASS_WITH_ARGUMENTS, PlanSpec.for_task(GNOMISH))
    assert policy.new_episode() == "discoverer"
    assert policy.attribute("max_depth") == 5 and policy.attribute("retries") == 0
    assert "def reach_gnomish_mines" in source              # the helper the class lacked
    CodePolicy.from_source(source, SkillSet().names, SkillSet().with_precondition())
    trace = simulate(policy, turns=30, branch_depth=2, seed=1, stop=lambda t: t.branch == 2)
    assert trace[-1].branch == 2


def test_combine_generated_dry_runs_in_the_limited_child_first(monkeypatch):
    """`mmotif plan`'s combined policy is checked in the rlimited subprocess before it is built
    in-process (issue 17 #3): what the child refuses never runs here."""
    import mmotif.codegen.generate as generate

    seen = []
    real = generate.check_policy

    def recording(source, *args, **kwargs):
        seen.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(generate, "check_policy", recording)
    source, _ = combine_generated(CLASS_WITH_ARGUMENTS, PlanSpec.for_task(GNOMISH))
    assert seen == [source]
    hog = CLASS_WITH_ARGUMENTS.replace("        if branch_number == 0 and dungeon_depth == self.branch_depth + 1:",
                                       "        while True:\n            pass\n"
                                       "        if branch_number == 0 and dungeon_depth == self.branch_depth + 1:", 1)
    assert hog != CLASS_WITH_ARGUMENTS
    monkeypatch.setattr(generate, "CodePolicy", None)  # the in-process build must not be reached
    with pytest.raises(CodePolicyError, match="time budget|CPU"):
        combine_generated(hog, PlanSpec.for_task(GNOMISH))


# ---------------------------------------------------------------------------------------
# the sandboxed subprocess, with real hostile code
# ---------------------------------------------------------------------------------------
def test_unit_test_runs_and_prints_its_trace():
    run = run_unit_test(CLASS_WITH_ARGUMENTS + "\nplayer = NetHackPlayer(5, 2)\nfor t in range(3):\n"
                        "    print(f'Turn {t}: {random.choice([0, 2])}')\n")
    assert run.ok and run.output.splitlines()[0].startswith("Turn 0: ")


@pytest.mark.parametrize("code, status, words", [
    ("import os\nos.system('touch /tmp/pwned')\n", "refused", "import statements are not allowed"),
    ("print(open('/etc/passwd').read())\n", "refused", '"open" is not available'),
    ("f = getattr(print, '__globals__')\n", "refused", "not allowed"),
    ("print(().__class__.__bases__[0].__subclasses__())\n", "refused", "starts with"),
    ("x = 'a' * (10 ** 9)\n", "error", "would have"),
    ("while True:\n    pass\n", "timeout", "time budget"),
])
def test_hostile_code_is_refused_or_stopped(code, status, words):
    run = run_unit_test(code, RunLimits(budget_s=1.0))
    assert run.status == status and words in run.error, run
    assert not os.path.exists("/tmp/pwned")


def test_runaway_cpu_is_killed_by_the_subprocess_limit():
    # a budget longer than the CPU limit: the OS limit, not the sandbox, stops it
    run = run_unit_test("while True:\n    pass\n", RunLimits(cpu_s=1, budget_s=60, wall_s=30))
    assert run.status == "killed" and "SIGXCPU" in run.error and "CPU-time limit" in run.error


def test_wall_clock_limit_kills_the_subprocess():
    run = run_unit_test("while True:\n    pass\n", RunLimits(cpu_s=30, budget_s=60, wall_s=1.0))
    assert run.status == "killed" and "wall-clock" in run.error


def test_memory_hog_is_stopped_by_the_address_space_limit():
    hog = "a = []\nfor i in range(100000):\n    a.append('x' * 1000000)\n"
    run = run_unit_test(hog, RunLimits(memory_mb=200, budget_s=60))
    assert run.status == "killed" and "address-space limit of 200 MB" in run.error, run


# ---------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------
def test_plan_accepts_on_a_yes_and_stores_the_generation(tmp_path):
    llm = ScriptedLLM([reply_with(GOOD_CLASS), "Yes. The player reaches the Mines in turn 4."])
    result = plan(GNOMISH.instruction, llm, task=GNOMISH, record_dir=tmp_path, name="gnomish",
                  log=lambda _: None)
    assert result.accepted and len(result.iterations) == 1
    assert "Task completed!" in result.test_output and "Turn 1:" in result.test_output
    assert result.iterations[0]["notes"][0].startswith("dropped `import random`")
    record = json.loads(Path(result.record_path).read_text())
    assert record["accepted"] and record["model"] == "scripted:stand-in"
    assert record["prompt"].startswith("You are to write the method")
    assert record["iterations"][0]["test"]["status"] == "ok"
    assert "check_answer" in record["iterations"][0]
    # the check question carries the trace
    assert "Task completed!" in llm.calls[1][-1]["content"]
    CodePolicy.from_source(result.source, SkillSet().names, SkillSet().with_precondition())


def test_plan_feeds_failures_back_and_rewrites(tmp_path):
    broken = GOOD_CLASS.replace('return "descender"\n        return self.reach', 'return descender\n        return self.reach')
    bad_test = unit_test_scaffold(PlanSpec.for_task(GNOMISH), "branch_number == 2") + "print(missing_name)\n"
    llm = ScriptedLLM([
        "I think the answer is to go down.",                    # 1: no code block
        reply_with(broken),                                     # 2: NameError in the dry run
        reply_with(GOOD_CLASS, bad_test),                       # 3: NameError in the test
        reply_with(GOOD_CLASS), "yes - it reaches the Mines.",   # 4: runs, accepted
    ])
    result = plan(GNOMISH.instruction, llm, task=GNOMISH, record_dir=tmp_path, log=lambda _: None)
    assert result.accepted and len(result.iterations) == 4
    its = result.iterations
    assert "no ```python code block" in its[0]["problem"]
    assert "cannot be used as a policy" in its[1]["problem"] and "NameError" in its[1]["policy_check"]
    assert its[2]["test"]["status"] == "error" and "missing_name" in its[2]["problem"]
    assert "Turn 1:" in its[2]["test"]["output"]             # the trace up to the failure
    # what was sent back: the failures, each with a request to fix
    assert "no ```python code block" in llm.calls[1][-1]["content"]
    assert "NameError" in llm.calls[2][-1]["content"] and "missing_name" in llm.calls[3][-1]["content"]


def test_plan_reports_a_clear_failure_after_three_rewrites(tmp_path):
    llm = ScriptedLLM([reply_with(GOOD_CLASS), "The output is wrong."] * 4)
    result = plan(GNOMISH.instruction, llm, task=GNOMISH, record_dir=tmp_path, log=lambda _: None)
    assert not result.accepted and len(result.iterations) == 4 and not llm.replies
    assert result.reason.startswith("not accepted after 4 generations (3 rewrites)")
    assert all(not it["accepted"] and it["check_answer"] == "The output is wrong." for it in result.iterations)
    # each rewrite request carries the verdict and asks for a line-by-line reflection
    assert "Reflect line by line" in llm.calls[2][-1]["content"]
    assert "The output is wrong." in llm.calls[2][-1]["content"]
    assert json.loads(Path(result.record_path).read_text())["accepted"] is False


def test_cmd_plan_writes_policy_or_falls_back_only_when_asked(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_plan_arguments(parser)
    args = parser.parse_args(["--task", "gnomish", "--out", str(tmp_path)])
    llm = ScriptedLLM([reply_with(GOOD_CLASS), "Yes."])
    assert cmd_plan(args, llm=llm) == 0
    text = (tmp_path / "gnomish.py").read_text()
    assert text.startswith("# mmotif plan: accepted")
    CodePolicy.from_source(text, SkillSet().names, SkillSet().with_precondition())
    assert "Turn 1:" in (tmp_path / "gnomish.trace.txt").read_text()
    # a failing generation without --reference: exit 1, no policy file
    out2 = tmp_path / "fail"
    args = parser.parse_args(["--task", "delphi", "--out", str(out2)])
    assert cmd_plan(args, llm=ScriptedLLM(["no code"] * 4)) == 1
    assert not (out2 / "delphi.py").exists()
    # ... with --reference: the shipped policy, marked as such
    args = parser.parse_args(["--task", "delphi", "--out", str(out2), "--reference"])
    assert cmd_plan(args, llm=ScriptedLLM(["no code"] * 4)) == 0
    text = (out2 / "delphi.py").read_text()
    assert text.startswith("# mmotif plan: REFERENCE policy")
    policy = CodePolicy.from_source(text, SkillSet().names, SkillSet().with_precondition())
    assert policy.new_episode() == "discoverer"
    # no LLM at all: only with --reference
    args = parser.parse_args(["--task", "minetown", "--backend", "none", "--out", str(out2)])
    assert cmd_plan(args) == 2
    args = parser.parse_args(["--task", "minetown", "--backend", "none", "--reference", "--out", str(out2)])
    assert cmd_plan(args) == 0 and (out2 / "minetown.py").is_file()


# ---------------------------------------------------------------------------------------
# the real embedded LLM
# ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_refinement_loop_with_the_embedded_llm(tmp_path):
    """The smallest embedded model (SmolLM2-135M) writes, tests and judges code on the CPU:
    the loop must end accepted or with a clear failure after one rewrite, every round stored.
    (The loop's control flow over more rounds is tested above with a scripted coder; one
    rewrite is enough to run the real rewrite prompt.) About 10-15 s of prompt processing plus
    ~0.1 s per generated token per call on a busy 2-core machine, hence short answers: what
    is under test is the loop around a real model, not the model's code."""
    from mmotif.llm.embedded import EmbeddedBackend

    try:
        llm = EmbeddedBackend("smollm2-135m", num_threads=1, dtype="float32")
    except Exception as err:                                # no cached model and no network
        pytest.skip(f"embedded model unavailable: {err}")
    result = plan("Get the player into the Gnomish Mines.", llm, task=GNOMISH, max_tokens=120,
                  temperature=0.2, record_dir=tmp_path, name="gnomish", log=print, max_rewrites=1)
    record = json.loads(Path(result.record_path).read_text())
    assert 1 <= len(record["iterations"]) <= 2
    assert record["model"] == "embedded:smollm2-135m"
    if result.accepted:
        assert is_yes(result.iterations[-1]["check_answer"])
        CodePolicy.from_source(result.source, SkillSet().names, SkillSet().with_precondition())
    else:
        assert len(record["iterations"]) == 2
        assert result.reason.startswith("not accepted after 2 generations (1 rewrite)")
    print(result.reason)


def test_cmd_plan_plans_for_the_skills_of_its_config(tmp_path):
    from mmotif.cli import build_parser
    from mmotif.skills.specs import PAPER_SKILLS

    config = tmp_path / "run.yaml"
    extra = "  - name: collector\n    description: Picks up every item in sight.\n    preference: Favour new items.\n"
    paper = "".join(f"  - name: {s.name}\n    description: {json.dumps(s.description)}\n"
                    f"    preference: {json.dumps(s.preference)}\n" for s in PAPER_SKILLS)
    config.write_text("skills:\n" + paper + extra)
    argv = ["plan", "reach depth 3", "--config", str(config), "--out", str(tmp_path / "plans")]
    llm = ScriptedLLM(["no code"] * 4)
    assert cmd_plan(build_parser(argv).parse_args(argv), llm=llm) == 1
    assert '"collector"' in llm.calls[0][-1]["content"] and "Picks up every item" in llm.calls[0][-1]["content"]
    argv = argv[:-2] + ["--out", str(tmp_path / "default")]          # without --config: the paper's five
    argv.remove("--config"), argv.remove(str(config))
    llm = ScriptedLLM(["no code"] * 4)
    assert cmd_plan(build_parser(argv).parse_args(argv), llm=llm) == 1
    assert '"collector"' not in llm.calls[0][-1]["content"] and '"descender"' in llm.calls[0][-1]["content"]
