"""The one refinement loop of LLM code generation (spec §6.1, §12.1), shared by every phase.

A :class:`Phase` says what is asked and how an answer is judged: the first prompt, how the
extracted code is prepared (scaffold test appended, ``import random`` dropped), how it is
built into a deployable, dry-run-checked policy (``build``), what runs as its unit test, and
the check question. :func:`refine` does the rest, the same for task policies (``mmotif plan``)
and for the skills' initiation/termination functions and training-time policy
(``mmotif skills-code``):

1. generate; take the first python code block of the reply (`extract_code`);
2. ``phase.prepare`` then ``phase.build`` (sandbox compile and dry run, first in the
   rlimited child); then the LLM's unit test against the built policy in the sandboxed
   subprocess (:func:`mmotif.codegen.runner.run_unit_test`);
3. a failure goes back with the failure prompt; a completed test's trace goes back with the
   phase's check question, accepted only when the answer *starts* with "yes" (`is_yes`);
   otherwise the rewrite prompt;
4. at most `max_rewrites` rewrites. After every generation the whole transcript is stored as
   JSON (prompts, each reply, code, test output, verdict, acceptance).
"""

from __future__ import annotations

import ast
import datetime as _dt
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmotif.codegen.prompts import SYSTEM_PROMPT, failure_prompt, rewrite_prompt
from mmotif.codegen.runner import RunLimits, run_unit_test
from mmotif.codegen.simulate import format_trace, simulate
from mmotif.sandbox import CodePolicyError, UnsafeCodeError
from mmotif.skills.code_policy import CLASS_NAME, CodePolicy

__all__ = ["MAX_REWRITES", "Phase", "PlanResult", "extract_code", "is_yes", "refine", "unit_test_part"]

MAX_REWRITES = 3
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


def drop_random_import(code: str) -> tuple[str, list[str]]:
    """Drop ``import random`` lines (the sandbox provides `random`). Returns (code, notes)."""
    lines = code.splitlines()
    kept = [ln for ln in lines if not re.fullmatch(r"\s*import random\s*", ln)]
    notes = ["dropped `import random` (the sandbox provides random)"] if len(kept) != len(lines) else []
    return "\n".join(kept) + "\n", notes


def has_test(code: str) -> bool | None:
    """Does the code have top-level statements besides definitions (a unit test)? None when
    it does not parse."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    return any(not isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.Import, ast.ImportFrom))
               and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in tree.body)


def unit_test_part(code: str) -> str:
    """Everything at the top level of `code` except the class and imports: the unit test."""
    tree = ast.parse(code)
    parts = [ast.get_source_segment(code, n) for n in tree.body
             if not (isinstance(n, ast.ClassDef) and n.name == CLASS_NAME)
             and not isinstance(n, (ast.Import, ast.ImportFrom))]
    return "\n".join(p for p in parts if p) + "\n"


class Phase:
    """What one generation asks for and how its answer is built and judged (subclassed per
    phase: task policy, initiation/termination, training-time policy stages)."""

    name = "policy"          # record file name
    tag = "plan"             # log prefix
    instruction = ""         # the request in words (records, file headers)

    def first_prompt(self) -> str:
        raise NotImplementedError

    def prepare(self, code: str) -> tuple[str, list[str]]:
        """The code as it will be tested (e.g. with the scaffold test appended), and notes."""
        return drop_random_import(code)

    def build(self, code: str) -> tuple[str, CodePolicy]:
        """(deployable source, its checked policy); raises UnsafeCodeError/CodePolicyError."""
        raise NotImplementedError

    def test_source(self, source: str, code: str) -> str:
        """The LLM's unit test runs against the policy as it will be deployed."""
        return source + "\n\n" + unit_test_part(code)

    def check_prompt(self, trace: str) -> str:
        raise NotImplementedError

    def failure_prompt(self, problem: str) -> str:
        return failure_prompt(problem)

    def rewrite_prompt(self, answer: str) -> str:
        return rewrite_prompt(answer)

    def simulation(self, policy: CodePolicy) -> str:
        """The built policy in the scripted depth/branch world (shown in trace files)."""
        try:
            return format_trace(simulate(policy, turns=20, branch_depth=2))
        except CodePolicyError as err:
            return f"(simulation failed: {err})"

    def record(self) -> dict:
        """What the generation record says about the request, besides the transcript."""
        return {"instruction": self.instruction, "phase": self.name}


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
    code: str | None = None                  # the accepted (or last usable) generated code

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _chat(llm, messages, max_tokens, temperature) -> str:
    return llm.chat([messages], max_tokens=max_tokens, temperature=temperature)[0]


def model_name(llm) -> str:
    return f"{getattr(llm, 'name', type(llm).__name__)}:{getattr(llm, 'model', '')}"


def _try_candidate(phase: Phase, code: str, it: dict, result: PlanResult, limits: RunLimits) -> str | None:
    """Build and test one candidate; the problem in words, or None when its test completed."""
    try:
        source, policy = phase.build(code)
        it["policy_check"] = "ok"
    except (UnsafeCodeError, CodePolicyError) as err:
        it["policy_check"] = str(err)
        return f"the class cannot be used as a policy: {err}"
    run = run_unit_test(phase.test_source(source, code), limits)
    it["test"] = run.to_dict()
    result.test_output = run.report()
    if not run.ok:
        return f"the unit test did not complete: {run.report()[-3000:]}"
    result.source, result.code = source, code
    result.simulation = phase.simulation(policy)
    return None


def refine(
    phase: Phase,
    llm,
    *,
    max_rewrites: int = MAX_REWRITES,
    max_tokens: int = 4096,
    temperature: float = 0.2,
    limits: RunLimits = RunLimits(),
    record_dir: str | Path | None = None,
    log=None,
) -> PlanResult:
    """Generate, test and refine the code `phase` asks for (see the module docstring).

    `llm`: any object with ``chat(messages_batch, max_tokens=..., temperature=...) -> list[str]``.
    `record_dir`: where the generation JSON is written (after every generation).
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    base = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": phase.first_prompt()}]
    messages = list(base)
    result = PlanResult(False, phase.instruction, model_name(llm), "not started")
    started = _dt.datetime.now(_dt.timezone.utc)

    def store() -> None:                     # after every generation: a long run leaves a trail
        if record_dir is not None:
            _store(result, phase, Path(record_dir), started, max_tokens, temperature, limits, max_rewrites)
    for round_no in range(1, max_rewrites + 2):
        it: dict = {"round": round_no, "messages": messages}
        t0 = time.perf_counter()
        reply = _chat(llm, messages, max_tokens, temperature)
        it.update(reply=reply, generate_s=round(time.perf_counter() - t0, 2))
        code = extract_code(reply)
        if code is None:
            it["code"] = None
            problem = "the reply contains no ```python code block."
        else:
            code, notes = phase.prepare(code)
            it.update(code=code, notes=notes)
            problem = _try_candidate(phase, code, it, result, limits)
        if problem is not None:
            it.update(accepted=False, problem=problem)
            result.iterations.append(it)
            log(f"[{phase.tag}] round {round_no}: {problem.splitlines()[0][:160]}")
            result.reason = f"round {round_no}: {problem.splitlines()[0][:300]}"
            store()
            messages = base + [{"role": "assistant", "content": reply},
                               {"role": "user", "content": phase.failure_prompt(problem)}]
            continue
        check = phase.check_prompt(result.test_output[-6000:])
        check_messages = base + [{"role": "assistant", "content": reply}, {"role": "user", "content": check}]
        answer = _chat(llm, check_messages, min(max_tokens, 1024), temperature)
        accepted = is_yes(answer)
        it.update(check_question=check, check_answer=answer, accepted=accepted)
        result.iterations.append(it)
        log(f"[{phase.tag}] round {round_no}: test ran ({len(result.test_output.splitlines())} lines); "
            f"verdict {'yes: accepted' if accepted else repr(answer.strip()[:60])}")
        if accepted:
            result.accepted = True
            result.reason = f"accepted in round {round_no} (the check answer starts with yes)"
            break
        result.reason = f"round {round_no}: the check answer does not start with yes"
        store()
        messages = check_messages + [{"role": "assistant", "content": answer},
                                     {"role": "user", "content": phase.rewrite_prompt(answer)}]
    if not result.accepted:
        result.reason = (f"not accepted after {len(result.iterations)} generations "
                         f"({max_rewrites} rewrite{'' if max_rewrites == 1 else 's'}); last: {result.reason}")
    store()
    return result


def _store(result: PlanResult, phase: Phase, folder: Path, started, max_tokens, temperature,
           limits: RunLimits, max_rewrites: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}_{re.sub(r'[^A-Za-z0-9_-]+', '-', phase.name)[:60]}.json"
    record = {
        **phase.record(), "model": result.model,
        "started": started.isoformat(), "temperature": temperature, "max_tokens": max_tokens,
        "limits": limits.__dict__, "max_rewrites": max_rewrites,
        "prompt": phase.first_prompt(), "accepted": result.accepted, "reason": result.reason,
        "iterations": result.iterations, "test_output": result.test_output,
        "simulation": result.simulation, "policy_source": result.source,
    }
    path.write_text(json.dumps(record, indent=1, default=str))
    result.record_path = str(path)
