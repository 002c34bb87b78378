"""The dry run of a generated policy in the limited subprocess (issue 17 #3: `mmotif plan`'s dry
run had no rlimits)."""

from __future__ import annotations

import signal

from mmotif.codegen.runner import RunLimits, check_policy

SKILLS = ("discoverer", "descender")
GOOD = '''
class NetHackPlayer:
    def set_initial_values(self):
        self.skill = "discoverer"

    def skill_termination(self, skill, skill_time, depth, start_depth, **preconditions):
        return skill_time >= 10

    def perform_task(self, current_skill, dungeon_depth, branch_number, **preconditions):
        return "descender" if current_skill == "discoverer" else "discoverer"
'''


def test_a_good_policy_passes_the_checked_dry_run():
    run = check_policy(GOOD, SKILLS, ())
    assert run.ok, run.report()


def test_a_bad_result_is_reported_with_the_method():
    run = check_policy(GOOD.replace('"descender" if', '"nowhere" if'), SKILLS, (), name="gen.py")
    assert run.status == "error" and "gen.py: dry run" in run.error and "returned 'nowhere'" in run.error


def test_the_dry_run_is_under_the_cpu_limit():
    hog = GOOD.replace("return skill_time >= 10", "while True:\n            pass")
    run = check_policy(hog, SKILLS, (), RunLimits(cpu_s=1, wall_s=10), budget_s=60)
    assert run.status == "killed" and "SIGXCPU" in run.error


def test_the_cpu_limit_holds_when_the_parent_ignores_sigxcpu():
    """An ignored SIGXCPU is inherited across exec (seen in the full suite, after Ray/NLE
    tests): the child restores the default, so the soft limit still ends it."""
    previous = signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    try:
        test_the_dry_run_is_under_the_cpu_limit()
    finally:
        signal.signal(signal.SIGXCPU, previous)
