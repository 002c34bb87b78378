"""LLM code generation of task policies over skills, with automated refinement (spec §12.1).

`plan(instruction, llm, ...)` runs the shared refinement loop (:func:`mmotif.codegen.refine.refine`)
with a :class:`TaskPhase`:

1. the prompt of :mod:`mmotif.codegen.prompts` asks for the class and its unit test;
2. ``import random`` is dropped (the sandbox provides ``random``); the scaffold test is
   appended if the reply has none;
3. the deployable policy is built from the generated class (:func:`combine_generated`: the
   exploration helpers it lacks, the initiation/termination functions (the run's generated
   ones when given, else the built-ins) and the task's starting values; dry-run checked),
   then the LLM's unit test runs against that policy in the sandboxed subprocess;
4. failures go back with a request to fix; a completed test's trace goes back with the check
   question, accepted only when the answer *starts* with "yes"; otherwise a rewrite;
5. at most 3 rewrites (4 generations in all). Every generation is stored as JSON.

The result is a policy file (the combined class source, loadable with
``CodePolicy.from_source``) and its test trace. Nothing falls back to a shipped policy
unless the caller asks (`mmotif plan --reference`).
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

from mmotif.codegen.prompts import (
    PLACEHOLDER, PlanSpec, check_prompt, initial_prompt, initial_values_source, unit_test_scaffold,
)
from mmotif.codegen.refine import (
    MAX_REWRITES, Phase, PlanResult, drop_random_import, extract_code, has_test, is_yes, refine,
    unit_test_part,
)
from mmotif.codegen.runner import RunLimits, check_policy
from mmotif.codegen.simulate import format_trace, simulate
from mmotif.config import CoderConfig, resolve_config
from mmotif.llm.weights import DEFAULT_MODEL
from mmotif.sandbox import CodePolicyError, UnsafeCodeError
from mmotif.skills.code_policy import CLASS_NAME, CodePolicy, builtin_source, combine_parts

__all__ = [
    "PlanResult",
    "TaskPhase",
    "builtin_methods",
    "cmd_plan",
    "combine_generated",
    "extract_code",
    "generated_class",
    "is_yes",
    "plan",
    "prepare_code",
    "unit_test_part",
]

HELPERS = ("__init__", "select_skill", "reach_gnomish_mines", "reach_dungeons_of_doom")


def prepare_code(code: str, spec: PlanSpec) -> tuple[str, list[str]]:
    """Drop ``import random`` lines (the sandbox provides it) and append the scaffold unit
    test when the code has no top-level statements besides definitions. Returns (code, notes)."""
    code, notes = drop_random_import(code)
    tested = has_test(code)
    if tested is False:
        code += "\n\n" + unit_test_scaffold(spec, condition="False")
        notes.append("the reply had no unit test: appended the scaffold (no success condition)")
    elif tested and PLACEHOLDER in code:
        code = code.replace(PLACEHOLDER, "False")
        notes.append("the success condition was left as the placeholder: replaced by False")
    return code, notes


# ---------------------------------------------------------------------------------------
# From the generated class to a deployable policy
# ---------------------------------------------------------------------------------------
def methods_of(source: str) -> dict[str, str]:
    """{name: dedented source} of the methods of the first class in `source`."""
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    return {n.name: textwrap.dedent(ast.get_source_segment(source, n, padded=True))
            for n in cls.body if isinstance(n, ast.FunctionDef)}


def builtin_methods() -> dict[str, str]:
    """The built-in training policy's methods (select_skill, reach_*, perform_task, ...)."""
    return methods_of(builtin_source("exploration"))


_INIT_DEFAULTS = {"max_depth": -1, "branch_depth": -2}


def generated_class(code: str) -> ast.ClassDef:
    """The class NetHackPlayer of generated code, its ``__init__`` parameters given the defaults
    the reference env passes (max_depth=-1, branch_depth=-2, others None). Raises
    UnsafeCodeError when the code does not parse or defines no such class."""
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        raise UnsafeCodeError(f"line {err.lineno}: SyntaxError: {err.msg}") from None
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == CLASS_NAME), None)
    if cls is None:
        raise UnsafeCodeError(f"the code defines no class {CLASS_NAME}")
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is not None:
        args = init.args
        positional = args.posonlyargs + args.args
        missing = len(positional) - 1 - len(args.defaults)
        if missing > 0:
            extra = [ast.Constant(_INIT_DEFAULTS.get(a.arg)) for a in positional[1:1 + missing]]
            args.defaults = extra + list(args.defaults)
        args.kw_defaults = [d if d is not None else ast.Constant(None) for d in args.kw_defaults]
    return cls


def defined_methods(cls: ast.ClassDef) -> set[str]:
    return {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}


def rename_method(cls: ast.ClassDef, old: str, new: str) -> bool:
    """Rename method `old` of `cls` (in place); was it there?"""
    found = False
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == old:
            node.name, found = new, True
    return found


def class_source(cls: ast.ClassDef) -> str:
    return ast.unparse(ast.fix_missing_locations(cls))


def combine_generated(code: str, spec: PlanSpec, skills=None, seed: int | None = 0,
                      name: str = "generated", initiation_termination: str | None = None,
                      ) -> tuple[str, CodePolicy]:
    """The deployable policy from the generated code (spec §12.1 item 4).

    Keeps the generated class (its unit test is dropped), adds the exploration helpers the
    class lacks, then the initiation/termination functions and a ``set_initial_values`` with
    the task's values (which first calls the class's own starting values, renamed
    ``task_initial_values``). `initiation_termination`: a class-body fragment with the
    run's generated ``skill_precondition``/``skill_termination`` (`mmotif skills-code`);
    None: the built-ins. Raises UnsafeCodeError/CodePolicyError with the reason when the
    result cannot be used.
    """
    from mmotif.skills.specs import SkillSet

    skills = skills or SkillSet()
    cls = generated_class(code)
    defined = defined_methods(cls)
    own_values = rename_method(cls, "set_initial_values", "task_initial_values")
    builtin = builtin_methods()
    missing_helpers = [builtin[h] for h in HELPERS if h not in defined]
    parts = [(f"{name} (generated class)", class_source(cls))]
    if missing_helpers:
        parts.append(("builtin/exploration.py (helpers the class lacks)", "\n\n".join(missing_helpers)))
    if initiation_termination is None:
        parts.append(("builtin/initiation_termination.py", builtin_source("initiation_termination")))
    else:
        parts.append(("generated initiation/termination", initiation_termination))
    parts.append((f"starting values of {spec.task_name or 'the task'}", initial_values_source(spec, own_values)))
    return checked_policy(parts, skills, name, seed)


def checked_policy(parts, skills, name: str, seed: int | None) -> tuple[str, CodePolicy]:
    """(combined source, CodePolicy) of `parts`, dry-run checked in the rlimited child before
    it is built in-process."""
    _check_in_limited_child(combine_parts(parts)[0], skills, name, seed)
    policy = CodePolicy.from_parts(parts, skills.names, skills.with_precondition(), name=name, seed=seed)
    return policy.source, policy


def _check_in_limited_child(source: str, skills, name: str, seed: int | None) -> None:
    """Loads and dry-runs the policy in the rlimited subprocess first: C-level work that the
    in-process sandbox cannot interrupt is killed there, before it runs here."""
    run = check_policy(source, skills.names, skills.with_precondition(), name=name, seed=seed or 0)
    if run.ok:
        return
    error = UnsafeCodeError if run.status == "refused" else CodePolicyError
    raise error(f"{name}: {run.error or run.status}")


# ---------------------------------------------------------------------------------------
# The task phase
# ---------------------------------------------------------------------------------------
class TaskPhase(Phase):
    """A task's policy over skills (`perform_task`), from the task's instruction."""

    def __init__(self, spec: PlanSpec, skills=None, name: str = "policy",
                 initiation_termination: str | None = None):
        self.spec, self.skills, self.name = spec, skills, name
        self.instruction = spec.instruction
        self.initiation_termination = initiation_termination

    def first_prompt(self) -> str:
        return initial_prompt(self.spec)

    def prepare(self, code: str) -> tuple[str, list[str]]:
        return prepare_code(code, self.spec)

    def build(self, code: str) -> tuple[str, CodePolicy]:
        return combine_generated(code, self.spec, self.skills, name=self.name,
                                 initiation_termination=self.initiation_termination)

    def check_prompt(self, trace: str) -> str:
        return check_prompt(self.spec, trace)

    def record(self) -> dict:
        return {"instruction": self.spec.instruction, "task": self.spec.task_name, "phase": "task"}


def plan(
    instruction: str | PlanSpec,
    llm,
    *,
    task=None,
    skills=None,
    max_rewrites: int = MAX_REWRITES,
    max_tokens: int = 4096,
    temperature: float = 0.2,
    limits: RunLimits = RunLimits(),
    record_dir: str | Path | None = None,
    name: str = "policy",
    log=None,
    initiation_termination: str | None = None,
) -> PlanResult:
    """Generate and refine a policy over skills for `instruction` (see the module docstring).

    `llm`: any object with ``chat(messages_batch, max_tokens=..., temperature=...) -> list[str]``
    (an :class:`~mmotif.llm.base.LLMBackend`). `task`: a
    :class:`~mmotif.tasks.Task` whose hints, starting values and env-kept attributes
    go with the instruction. `record_dir`: where the generation JSON is written.
    `initiation_termination`: generated skill functions to combine with (None: built-ins).
    """
    if isinstance(instruction, PlanSpec):
        spec = instruction
    elif task is not None:
        spec = PlanSpec.for_task(task, skills, instruction)
    else:
        spec = PlanSpec.free(instruction, skills)
    phase = TaskPhase(spec, skills, name, initiation_termination)
    return refine(phase, llm, max_rewrites=max_rewrites, max_tokens=max_tokens, temperature=temperature,
                  limits=limits, record_dir=record_dir, log=log)


# ---------------------------------------------------------------------------------------
# Writing the policy file
# ---------------------------------------------------------------------------------------
def _header(result: PlanResult) -> str:
    status = ("REFERENCE policy shipped with mmotif (asked for with --reference)" if result.reference
              else "accepted" if result.accepted else "NOT accepted")
    lines = [f"# mmotif plan: {status}", f"# instruction: {result.instruction}",
             f"# model: {result.model}", f"# {result.reason}"]
    if result.record_path:
        lines.append(f"# generation record: {result.record_path}")
    lines = [" ".join(line.split())[:300] for line in lines]      # one comment line each
    return "\n".join(lines) + "\n\n"


def write_policy(result: PlanResult, path: str | Path) -> tuple[Path, Path]:
    """Write the policy file and its trace file (`<path stem>.trace.txt`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_header(result) + (result.source or ""))
    trace = path.with_name(path.stem + ".trace.txt")
    trace.write_text(f"unit test output (LLM-written test):\n{result.test_output}\n\n"
                     f"combined policy in the scripted depth/branch world (20 turns, branch_depth 2):\n"
                     f"{result.simulation}\n")
    result.policy_path, result.trace_path = str(path), str(trace)
    return path, trace


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def coder_config(args) -> tuple[CoderConfig, Path | None]:
    """(the `coder:` section `mmotif plan` uses, the embedded model cache): the --config's when
    the command has one (`mmotif plan --config`), else the defaults; the command's flags over it."""
    cache = None
    if hasattr(args, "config"):
        cfg = resolve_config(args.config, args.preset, sets=args.set or ())[0]
        coder, cache = cfg.coder, cfg.paths.model_cache
    else:
        coder = CoderConfig()
    fields = {"model": args.model, "base_url": args.base_url, "max_tokens": args.max_tokens,
              "temperature": args.temperature, "max_rewrites": args.max_rewrites}
    fields = {k: v for k, v in fields.items() if v is not None}
    if args.backend not in (None, "none", coder.backend):  # another kind: its model, unless given
        fields = {"backend": args.backend, "model": DEFAULT_MODEL if args.backend == "embedded" else "default",
                  **fields}
    return CoderConfig.model_validate({**coder.model_dump(), **fields}), cache


def _make_llm(coder: CoderConfig, cache: Path | None):
    from mmotif.llm import backend_from_config

    try:
        return backend_from_config(coder, section="coder", cache_dir=cache)
    except ValueError as err:  # openai without a server
        raise SystemExit(f"mmotif plan: {err} (--base-url)") from None


def trained_skill_functions(args) -> str | None:
    """The initiation/termination functions the config's skills train with, when generated
    (`env.training_policy` a skills-code file, or `generate`: <run_dir>/skills_code/), so that
    a task policy runs the skills under the rules they learned; None: the built-ins."""
    from mmotif.codegen.skills_code import GENERATED_FILE, initiation_termination_of
    from mmotif.config import GENERATED_TRAINING_POLICY

    if not hasattr(args, "config"):
        return None
    cfg = resolve_config(args.config, args.preset, sets=args.set or ())[0]
    env = cfg.env
    source = env.training_policy_code
    if source is None and not env.training_policy.startswith("builtin:"):
        run_dir = Path(cfg.paths.run_dir).expanduser()
        path = (run_dir / "skills_code" / GENERATED_FILE if env.training_policy == GENERATED_TRAINING_POLICY
                else Path(env.training_policy))
        source = path.read_text() if path.is_file() else None
    return initiation_termination_of(source) if source else None


def cmd_plan(args, llm=None) -> int:
    """`mmotif plan`: generate (or, when asked, fall back to the reference) and write the
    policy file + trace. Exit 0 when a policy was written, 1 when generation failed."""
    from mmotif.tasks import get_task, reference_policy_source

    task = get_task(args.task) if args.task else None
    instruction = args.instruction or (task.instruction if task else None)
    if instruction is None:
        print("mmotif plan: give an instruction or --task", file=sys.stderr)
        return 2
    name = args.name or (task.name if task else "policy")
    out = Path(args.out)
    if args.reference and task is None:
        print("mmotif plan: --reference needs --task (the reference policies are per task)", file=sys.stderr)
        return 2
    result = None
    skills = plan_skills(args)
    if args.backend != "none" or llm is not None:
        coder, cache = coder_config(args)
        llm = llm or _make_llm(coder, cache)
        result = plan(instruction, llm, task=task, skills=skills, max_rewrites=coder.max_rewrites, max_tokens=coder.max_tokens,
                      temperature=coder.temperature, record_dir=out / "generations", name=name,
                      initiation_termination=trained_skill_functions(args))
        print(f"mmotif plan: {result.reason}")
        if result.accepted:
            path, trace = write_policy(result, out / f"{name}.py")
            print(f"policy: {path}\ntrace:  {trace}\nrecord: {result.record_path}")
            return 0
        if result.source is not None:
            path, _ = write_policy(result, out / f"{name}.rejected.py")
            print(f"last candidate (not accepted): {path}")
    elif not args.reference:
        print("mmotif plan: --backend none writes nothing without --reference", file=sys.stderr)
        return 2
    if args.reference:
        why = result.reason if result is not None else "no LLM (--backend none)"
        ref = PlanResult(True, instruction, "reference", f"fallback asked for with --reference ({why})",
                         source=reference_policy_source(task), reference=True,
                         record_path=result.record_path if result else None)
        policy = CodePolicy.from_source(ref.source, skills.names, skills.with_precondition(), name=f"reference:{task.name}", seed=0)
        ref.simulation = format_trace(simulate(policy, turns=20, branch_depth=2))
        ref.test_output = "(reference policy: no LLM unit test)"
        path, trace = write_policy(ref, out / f"{name}.py")
        print(f"policy (REFERENCE, not generated): {path}\ntrace:  {trace}")
        return 0
    print("mmotif plan: no policy accepted; see the record above (use --reference to fall back "
          "to the shipped reference policy)", file=sys.stderr)
    return 1


def plan_skills(args):
    """The skills `mmotif plan` plans for: the config's (`--config`, `--preset`, `--set`) when the
    command has those arguments, else the paper's five."""
    from mmotif.skills.specs import SkillSet

    if not hasattr(args, "config"):
        return SkillSet()
    cfg = resolve_config(args.config, args.preset, sets=args.set or ())[0]
    return SkillSet(skills=tuple(cfg.skills))
