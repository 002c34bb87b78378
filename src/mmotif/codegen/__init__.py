"""LLM code generation, with unit-test refinement (spec §5, §6, §12).

- :mod:`mmotif.codegen.refine`: the one refinement loop (`refine`) every phase goes through.
- :mod:`mmotif.codegen.skills_code`: phases 2 and 3 (the skills' initiation/termination
  functions and the training-time policy over skills), their combination, `mmotif skills-code`
  and what `mmotif run` does with ``env.training_policy: generate``; prompts in
  :mod:`mmotif.codegen.skill_prompts`.
- :mod:`mmotif.codegen.prompts`: the task prompts (skills, shown code, task, unit-test scaffold,
  chain-of-thought questions; check and rewrite prompts).
- :mod:`mmotif.codegen.runner`: the LLM's unit test in a sandboxed, resource-limited subprocess.
- :mod:`mmotif.codegen.generate`: task policies (`plan`), the combination into a deployable
  policy, and the `mmotif plan` command.
- :mod:`mmotif.codegen.simulate`: the scripted depth/branch world for checking policies.
"""

from mmotif.codegen.generate import (
    PlanResult, cmd_plan, combine_generated, extract_code, is_yes, plan, write_policy,
)
from mmotif.codegen.prompts import PlanSpec
from mmotif.codegen.runner import RunLimits, TestRun, run_unit_test
from mmotif.codegen.simulate import format_trace, simulate

__all__ = [
    "PlanResult", "PlanSpec", "RunLimits", "TestRun", "cmd_plan",
    "combine_generated", "extract_code", "format_trace", "is_yes", "plan", "run_unit_test",
    "simulate", "write_policy",
]
