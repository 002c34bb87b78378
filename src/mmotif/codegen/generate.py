"""LLM code generation with automated refinement (spec §6.1, §12.1, §15.1.8).

`plan(instruction, llm, ...)`:

1. ask the LLM (the prompt of :mod:`mmotif.codegen.prompts`) for the class and its unit test;
2. take the first python code block of the reply (`extract_code`); drop ``import random``
   (the sandbox provides ``random``); append the scaffold test if the reply has none;
3. build the deployable policy from the generated class (:func:`combine_generated`: the
   exploration helpers it lacks, the exploration initiation/termination functions and the
   task's starting values; dry-run checked by :class:`~mmotif.skills.code_policy.CodePolicy`),
   then run the LLM's unit test against that policy in the sandboxed subprocess
   (:func:`mmotif.codegen.runner.run_unit_test`);
4. if either failed, send the failure back and ask for a fix; otherwise send the test's
   trace back with the check question, and accept only when the answer *starts* with "yes"
   (case-insensitive, after stripping; ``is_yes``); otherwise ask for a line-by-line
   reflection and a rewrite;
5. at most 3 rewrites (4 generations in all). Every generation is stored as JSON (prompt
   messages, model, each iteration's reply, code, test output, verdict, acceptance).

The result is a policy file (the combined class source, loadable with
``CodePolicy.from_source``) and its test trace. Nothing falls back to a shipped policy
unless the caller asks (`mmotif plan --reference`).
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import json
import re
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmotif.codegen.prompts import (
    PLACEHOLDER, SYSTEM_PROMPT, PlanSpec, check_prompt, failure_prompt, initial_prompt,
    initial_values_source, rewrite_prompt, unit_test_scaffold,
)
from mmotif.codegen.runner import RunLimits, check_policy, run_unit_test
from mmotif.codegen.simulate import format_trace, simulate
from mmotif.config import CoderConfig, resolve_config
from mmotif.llm.weights import DEFAULT_MODEL
from mmotif.sandbox import CodePolicyError, UnsafeCodeError
from mmotif.skills.code_policy import CLASS_NAME, CodePolicy, builtin_source, combine_parts

__all__ = [
    "PlanResult",
    "add_plan_arguments",
    "cmd_plan",
    "combine_generated",
    "extract_code",
    "is_yes",
    "plan",
    "prepare_code",
]

MAX_REWRITES = 3
HELPERS = ("__init__", "select_skill", "reach_gnomish_mines", "reach_dungeons_of_doom")
_BLOCK = re.compile(r"```[ \t]*(python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)
_YES = re.compile(r"^\W*yes\b", re.I)


def extract_code(reply: str) -> str | None:
    """The first python code block of a reply (``` with a python tag, else the first fenced
    block that defines the class); an unterminated block runs to the end of the reply."""
    blocks = [(m.group(1), m.group(2)) for m in _BLOCK.finditer(reply)]
    for tag, body in blocks:
        if tag:
            return body.strip("\n") + "\n"
    for _, body in blocks:
        if f"class {CLASS_NAME}" in body:
            return body.strip("\n") + "\n"
    return None


def is_yes(answer: str) -> bool:
    """Does the answer *start* with yes (case-insensitive, after stripping whitespace and
    markup such as ``**``)? "The answer is yes" and "yesterday" do not."""
    return bool(_YES.match(answer.strip()))


def prepare_code(code: str, spec: PlanSpec) -> tuple[str, list[str]]:
    """Drop ``import random`` lines (the sandbox provides it) and append the scaffold unit
    test when the code has no top-level statements besides definitions. Returns (code, notes)."""
    notes = []
    lines = code.splitlines()
    kept = [ln for ln in lines if not re.fullmatch(r"\s*import random\s*", ln)]
    if len(kept) != len(lines):
        notes.append("dropped `import random` (the sandbox provides random)")
    code = "\n".join(kept) + "\n"
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code, notes
    statements = [n for n in tree.body if not isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.Import,
                                                             ast.ImportFrom))
                  and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    if not statements:
        code += "\n\n" + unit_test_scaffold(spec, condition="False")
        notes.append("the reply had no unit test: appended the scaffold (no success condition)")
    elif PLACEHOLDER in code:
        code = code.replace(PLACEHOLDER, "False")
        notes.append("the success condition was left as the placeholder: replaced by False")
    return code, notes


def unit_test_part(code: str) -> str:
    """Everything at the top level of `code` except the class and imports: the unit test."""
    tree = ast.parse(code)
    parts = [ast.get_source_segment(code, n) for n in tree.body
             if not (isinstance(n, ast.ClassDef) and n.name == CLASS_NAME)
             and not isinstance(n, (ast.Import, ast.ImportFrom))]
    return "\n".join(p for p in parts if p) + "\n"


# ---------------------------------------------------------------------------------------
# From the generated class to a deployable policy
# ---------------------------------------------------------------------------------------
def _builtin_functions() -> dict[str, str]:
    source = builtin_source("exploration")
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    return {n.name: textwrap.dedent(ast.get_source_segment(source, n))
            for n in cls.body if isinstance(n, ast.FunctionDef)}


_INIT_DEFAULTS = {"max_depth": -1, "branch_depth": -2}


def combine_generated(code: str, spec: PlanSpec, skills=None, seed: int | None = 0,
                      name: str = "generated") -> tuple[str, CodePolicy]:
    """The deployable policy from the generated code (spec §12.1 item 4).

    Keeps the generated class (its unit test is dropped), gives ``__init__`` parameters the
    defaults the reference env passes (max_depth=-1, branch_depth=-2, others None), adds the
    exploration helpers the class lacks, then the exploration initiation/termination
    functions and a ``set_initial_values`` with the task's values (which first calls the
    class's own starting values, renamed ``task_initial_values``). Raises
    UnsafeCodeError/CodePolicyError with the reason when the result cannot be used.
    """
    from mmotif.skills.specs import SkillSet

    skills = skills or SkillSet()
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        raise UnsafeCodeError(f"line {err.lineno}: SyntaxError: {err.msg}") from None
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == CLASS_NAME), None)
    if cls is None:
        raise UnsafeCodeError(f"the code defines no class {CLASS_NAME}")
    defined = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    own_values = "set_initial_values" in defined
    for node in cls.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        if node.name == "set_initial_values":
            node.name = "task_initial_values"
        if node.name == "__init__":
            args = node.args
            positional = args.posonlyargs + args.args
            missing = len(positional) - 1 - len(args.defaults)
            if missing > 0:
                extra = [ast.Constant(_INIT_DEFAULTS.get(a.arg)) for a in positional[1:1 + missing]]
                args.defaults = extra + list(args.defaults)
            args.kw_defaults = [d if d is not None else ast.Constant(None) for d in args.kw_defaults]
    class_source = ast.unparse(ast.fix_missing_locations(cls))
    builtin = _builtin_functions()
    missing_helpers = [builtin[h] for h in HELPERS if h not in defined]
    parts = [(f"{name} (generated class)", class_source)]
    if missing_helpers:
        parts.append(("builtin/exploration.py (helpers the class lacks)", "\n\n".join(missing_helpers)))
    parts.append(("builtin/initiation_termination.py", builtin_source("initiation_termination")))
    parts.append((f"starting values of {spec.task_name or 'the task'}", initial_values_source(spec, own_values)))
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
# The loop
# ---------------------------------------------------------------------------------------
@dataclass
class PlanResult:
    accepted: bool
    instruction: str
    model: str
    reason: str                              # why it stopped, in words
    source: str | None = None                # the combined policy source (last usable candidate)
    test_output: str = ""                    # the accepted (or last) unit-test trace
    simulation: str = ""                     # the combined policy in the scripted world
    iterations: list[dict] = field(default_factory=list)
    record_path: str | None = None
    policy_path: str | None = None
    trace_path: str | None = None
    reference: bool = False                  # the source is the shipped reference policy

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _chat(llm, messages, max_tokens, temperature) -> str:
    return llm.chat([messages], max_tokens=max_tokens, temperature=temperature)[0]


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
) -> PlanResult:
    """Generate and refine a policy over skills for `instruction` (see the module docstring).

    `llm`: any object with ``chat(messages_batch, max_tokens=..., temperature=...) -> list[str]``
    (an :class:`~mmotif.llm.base.LLMBackend`). `task`: a
    :class:`~mmotif.tasks.Task` whose hints, starting values and env-kept attributes
    go with the instruction. `record_dir`: where the generation JSON is written.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if isinstance(instruction, PlanSpec):
        spec = instruction
    elif task is not None:
        spec = PlanSpec.for_task(task, skills, instruction)
    else:
        spec = PlanSpec.free(instruction, skills)
    model = f"{getattr(llm, 'name', type(llm).__name__)}:{getattr(llm, 'model', '')}"
    prompt = initial_prompt(spec)
    base = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    messages = list(base)
    result = PlanResult(False, spec.instruction, model, "not started")
    started = _dt.datetime.now(_dt.timezone.utc)

    def store() -> None:                     # after every generation: a long run leaves a trail
        if record_dir is not None:
            _store(result, spec, Path(record_dir), name, started, max_tokens, temperature, limits)
    for round_no in range(1, max_rewrites + 2):
        it: dict = {"round": round_no, "messages": messages}
        t0 = time.perf_counter()
        reply = _chat(llm, messages, max_tokens, temperature)
        it.update(reply=reply, generate_s=round(time.perf_counter() - t0, 2))
        code = extract_code(reply)
        problem = None
        if code is None:
            problem = "the reply contains no ```python code block."
            it["code"] = None
        else:
            code, notes = prepare_code(code, spec)
            it.update(code=code, notes=notes)
            try:
                source, policy = combine_generated(code, spec, skills, name=name)
                it["policy_check"] = "ok"
            except (UnsafeCodeError, CodePolicyError) as err:
                problem = f"the class cannot be used as a policy: {err}"
                it["policy_check"] = str(err)
            if problem is None:
                # the LLM's test runs against the policy as it will be deployed
                test_code = source + "\n\n" + unit_test_part(code)
                run = run_unit_test(test_code, limits)
                it["test"] = run.to_dict()
                result.test_output = run.report()
                if not run.ok:
                    problem = f"the unit test did not complete: {run.report()[-3000:]}"
                else:
                    result.source = source
                    try:
                        result.simulation = format_trace(simulate(policy, turns=20, branch_depth=2))
                    except CodePolicyError as err:
                        result.simulation = f"(simulation failed: {err})"
        if problem is not None:
            it.update(accepted=False, problem=problem)
            result.iterations.append(it)
            log(f"[plan] round {round_no}: {problem.splitlines()[0][:160]}")
            result.reason = f"round {round_no}: {problem.splitlines()[0][:300]}"
            store()
            messages = base + [{"role": "assistant", "content": reply},
                               {"role": "user", "content": failure_prompt(problem)}]
            continue
        check = check_prompt(spec, result.test_output[-6000:])
        check_messages = base + [{"role": "assistant", "content": reply}, {"role": "user", "content": check}]
        answer = _chat(llm, check_messages, min(max_tokens, 1024), temperature)
        accepted = is_yes(answer)
        it.update(check_question=check, check_answer=answer, accepted=accepted)
        result.iterations.append(it)
        log(f"[plan] round {round_no}: test ran ({len(result.test_output.splitlines())} lines); "
            f"verdict {'yes: accepted' if accepted else repr(answer.strip()[:60])}")
        if accepted:
            result.accepted = True
            result.reason = f"accepted in round {round_no} (the check answer starts with yes)"
            break
        result.reason = f"round {round_no}: the check answer does not start with yes"
        store()
        messages = check_messages + [{"role": "assistant", "content": answer},
                                     {"role": "user", "content": rewrite_prompt(answer)}]
    if not result.accepted:
        result.reason = (f"not accepted after {len(result.iterations)} generations "
                         f"({max_rewrites} rewrites); last: {result.reason}")
    store()
    return result


def _store(result: PlanResult, spec: PlanSpec, folder: Path, name: str, started, max_tokens,
           temperature, limits: RunLimits) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}_{re.sub(r'[^A-Za-z0-9_-]+', '-', name)[:60]}.json"
    record = {
        "instruction": spec.instruction, "task": spec.task_name, "model": result.model,
        "started": started.isoformat(), "temperature": temperature, "max_tokens": max_tokens,
        "limits": limits.__dict__, "max_rewrites": MAX_REWRITES,
        "prompt": initial_prompt(spec), "accepted": result.accepted, "reason": result.reason,
        "iterations": result.iterations, "test_output": result.test_output,
        "simulation": result.simulation, "policy_source": result.source,
    }
    path.write_text(json.dumps(record, indent=1, default=str))
    result.record_path = str(path)


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
def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("instruction", nargs="?", default=None,
                        help="the task in words (default: the --task's own instruction)")
    parser.add_argument("--task", default=None,
                        help="a known task (gnomish, delphi, ...): its hints, starting values and "
                             "env-kept attributes go with the instruction")
    parser.add_argument("--backend", default=None, choices=("embedded", "openai", "none"),
                        help="LLM backend (default: coder.backend of the config, embedded; none: no LLM, "
                             "only with --reference)")
    parser.add_argument("--model", default=None,
                        help=f"model name (default: coder.model; when --backend changes the kind: "
                             f"{DEFAULT_MODEL} embedded, 'default' openai)")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible server (default: coder.base_url)")
    parser.add_argument("--max-rewrites", type=int, default=MAX_REWRITES)
    parser.add_argument("--max-tokens", type=int, default=None, help="default: coder.max_tokens (4096)")
    parser.add_argument("--temperature", type=float, default=None, help="default: coder.temperature (0.2)")
    parser.add_argument("--out", type=Path, default=Path("runs/plans"), help="output folder")
    parser.add_argument("--name", default=None, help="policy file name (default: task name or 'policy')")
    parser.add_argument("--reference", action="store_true",
                        help="if generation fails (or with --backend none), write the task's shipped "
                             "reference policy instead, marked as such")


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
              "temperature": args.temperature}
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
        result = plan(instruction, llm, task=task, skills=skills, max_rewrites=args.max_rewrites, max_tokens=coder.max_tokens,
                      temperature=coder.temperature, record_dir=out / "generations", name=name)
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
