"""Phases 2 and 3 from the coder LLM: the skills' initiation/termination functions and the
training-time policy over skills (spec §5, §6.1), through the shared refinement loop.

Three generations, in the method's order, each with its own LLM-completed unit test and
check question (:mod:`mmotif.codegen.skill_prompts`):

1. ``initiation_termination``: ``skill_precondition`` and ``skill_termination``;
2. ``select_skill``: the depth sweep (with ``__init__``);
3. ``branches``: ``reach_gnomish_mines`` and ``reach_dungeons_of_doom``, shown the class of 2.

Each is built and tested as part of a whole training policy: the generated part, the parts
already accepted, and the built-in parts for the rest; the fixed ``perform_task`` (the
per-episode coin flip between the two branches) and the starting values
(``builtin/initial_values.py``) are the method's own combine step. A part whose generation
is not accepted is replaced by its built-in, with one warning line naming the record file.

`generate_skills_code` returns the combined source; `write_skills_code` writes it with a
header saying where each part came from (the file `env.training_policy` may name);
`resolve_training_policy` is what `mmotif run` does with ``env.training_policy: generate``.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path

from mmotif.codegen import skill_prompts as prompts
from mmotif.codegen.generate import builtin_methods, checked_policy, class_source, generated_class, methods_of
from mmotif.codegen.refine import (
    MAX_REWRITES, Phase, PlanResult, drop_random_import, has_test, model_name, refine,
)
from mmotif.codegen.runner import RunLimits
from mmotif.config import GENERATED_TRAINING_POLICY, resolve_config, with_overrides
from mmotif.sandbox import UnsafeCodeError
from mmotif.skills.code_policy import CLASS_NAME, CodePolicy, builtin_source

__all__ = [
    "BranchesPhase",
    "SkillFunctionsPhase",
    "SkillsCode",
    "SweepPhase",
    "Parts",
    "cmd_skills_code",
    "generate_skills_code",
    "initiation_termination_of",
    "resolve_training_policy",
    "write_skills_code",
]

SWEEP_METHODS = ("__init__", "select_skill")
BRANCH_METHODS = ("reach_gnomish_mines", "reach_dungeons_of_doom")
SKILL_FUNCTIONS = ("skill_precondition", "skill_termination")
# methods of the combine step, never taken from a generated class
COMBINE_METHODS = frozenset({"perform_task", "set_initial_values"})
POLICY_METHODS = frozenset({*SWEEP_METHODS, *BRANCH_METHODS})
GENERATED_FILE = "training_policy.py"
PARTS = ("initiation_termination", "select_skill", "branches")


def _methods_of_class(code: str) -> dict[str, str]:
    """{name: source} of the generated class's methods (``__init__`` given defaults)."""
    return methods_of(class_source(generated_class(code)))


def initiation_termination_of(source: str) -> str:
    """The phase-2 fragment of a class: ``skill_precondition``, ``skill_termination`` and the
    helpers they may use (every method but the policy over skills and the combine step's)."""
    methods = methods_of(source)
    return "\n\n".join(text for name, text in methods.items()
                       if name not in POLICY_METHODS | COMBINE_METHODS) + "\n"


def _require(methods, names) -> None:
    missing = [m for m in names if m not in methods]
    if missing:
        raise UnsafeCodeError(f"class {CLASS_NAME} lacks the method(s) asked for: {', '.join(missing)}")


def _class_text(methods: dict[str, str]) -> str:
    body = "\n\n".join(textwrap.indent(text, "    ") for text in methods.values())
    return f"class {CLASS_NAME}:\n{body}\n"


@dataclass
class Parts:
    """The training policy's parts: the policy over skills' methods and the phase-2 fragment,
    each the built-in until a generation of it is accepted."""

    methods: dict[str, str] = field(default_factory=lambda: {
        k: v for k, v in builtin_methods().items() if k in POLICY_METHODS})
    skill_functions: str = field(default_factory=lambda: builtin_source("initiation_termination"))
    origin: dict[str, str] = field(default_factory=lambda: dict.fromkeys(PARTS, "built-in"))

    def sources(self) -> list[tuple[str, str]]:
        """(part name, text) in the combine order (mmotif.skills.code_policy.combine_parts)."""
        return [("policy over skills", _class_text(self.methods)),
                ("builtin/exploration.py perform_task", builtin_methods()["perform_task"]),
                ("initiation/termination", self.skill_functions),
                ("builtin/initial_values.py", builtin_source("initial_values"))]


class SkillsPhase(Phase):
    """One part of the skills' code, built and tested inside a whole training policy made of
    the parts accepted so far."""

    tag = "skills-code"
    asked: tuple[str, ...] = ()              # methods the reply must define

    def __init__(self, parts: Parts, skills):
        self.parts, self.skills = parts, skills
        self.names = tuple((s.name, s.description) for s in skills.skills)
        # positional in select_skill and the reach helpers: the built-ins' order (merchant, worshipper),
        # so a generated stage and a built-in one call each other right
        self.with_precondition = tuple(sorted(skills.with_precondition()))

    def scaffold(self) -> str:
        raise NotImplementedError

    def candidate(self, code: str) -> Parts:
        """The parts with this reply's code in place of this phase's part."""
        raise NotImplementedError

    def prepare(self, code: str) -> tuple[str, list[str]]:
        code, notes = drop_random_import(code)
        if has_test(code) is False:
            code += "\n\n" + self.scaffold()
            notes.append("the reply had no unit test: appended the scaffold")
        return code, notes

    def build(self, code: str) -> tuple[str, CodePolicy]:
        return checked_policy(self.candidate(code).sources(), self.skills, f"generated:{self.name}", seed=0)

    def accept(self, code: str) -> None:
        accepted = self.candidate(code)
        self.parts.methods, self.parts.skill_functions = accepted.methods, accepted.skill_functions
        self.parts.origin[self.name] = "generated"


class SkillFunctionsPhase(SkillsPhase):
    name = "initiation_termination"
    instruction = "the skills' initiation and termination functions (phase 2)"

    def first_prompt(self) -> str:
        return prompts.skill_functions_prompt(self.names, self.with_precondition)

    def scaffold(self) -> str:
        return prompts.skill_functions_scaffold(self.with_precondition)

    def candidate(self, code: str) -> Parts:
        methods = _methods_of_class(code)
        _require(methods, SKILL_FUNCTIONS if self.with_precondition else SKILL_FUNCTIONS[1:])
        return replace(self.parts, skill_functions=initiation_termination_of(class_source(generated_class(code))))

    def check_prompt(self, trace: str) -> str:
        return prompts.skill_functions_check_prompt(self.names, self.with_precondition, trace)

    def simulation(self, policy: CodePolicy) -> str:
        return ""                            # the depth world does not exercise these functions


class PolicyStagePhase(SkillsPhase):
    """A stage of the policy over skills: the methods it asks for (and new helpers) replace the
    parts'; the other stage's methods in the reply are not taken, so each part's origin holds."""

    def candidate(self, code: str) -> Parts:
        methods = _methods_of_class(code)
        _require(methods, [m for m in self.asked if m != "__init__"])
        others = POLICY_METHODS | COMBINE_METHODS | set(SKILL_FUNCTIONS)
        taken = {k: v for k, v in methods.items() if k in self.asked or k not in others}
        return replace(self.parts, methods={**self.parts.methods, **taken})


class SweepPhase(PolicyStagePhase):
    name = "select_skill"
    instruction = "the training-time policy over skills, stage 1: select_skill (phase 3)"
    asked = SWEEP_METHODS

    def first_prompt(self) -> str:
        return prompts.sweep_prompt(self.names, self.with_precondition)

    def scaffold(self) -> str:
        return prompts.sweep_scaffold(self.with_precondition)

    def prepare(self, code: str) -> tuple[str, list[str]]:
        code, notes = super().prepare(code)
        if prompts.DEPTH_PLACEHOLDER in code:
            code = code.replace(prompts.DEPTH_PLACEHOLDER, "3")
            notes.append("the depth was left as the placeholder: replaced by 3")
        return code, notes

    def check_prompt(self, trace: str) -> str:
        return prompts.sweep_check_prompt(trace)


class BranchesPhase(PolicyStagePhase):
    name = "branches"
    instruction = ("the training-time policy over skills, stage 2: reach_gnomish_mines and "
                   "reach_dungeons_of_doom (phase 3)")
    asked = BRANCH_METHODS

    def first_prompt(self) -> str:
        shown = _class_text({k: v for k, v in self.parts.methods.items() if k not in BRANCH_METHODS})
        return prompts.branches_prompt(self.names, self.with_precondition, shown)

    def scaffold(self) -> str:
        return prompts.branches_scaffold(self.with_precondition)

    def check_prompt(self, trace: str) -> str:
        return prompts.branches_check_prompt(trace)


PHASES = (SkillFunctionsPhase, SweepPhase, BranchesPhase)


# ---------------------------------------------------------------------------------------
# The three generations, combined
# ---------------------------------------------------------------------------------------
@dataclass
class SkillsCode:
    source: str                              # the combined training policy
    origin: dict[str, str]                   # part -> "generated" | "built-in"
    results: dict[str, PlanResult]           # part -> its generation
    model: str = ""

    @property
    def fully_generated(self) -> bool:
        return all(v == "generated" for v in self.origin.values())

    def warnings(self) -> list[str]:
        """One line per part that fell back to its built-in."""
        return [f"WARNING: the coder's {name} failed its checks ({r.reason[:200]}); the run uses the "
                f"BUILT-IN {name} instead. Record: {r.record_path}"
                for name, r in self.results.items() if not r.accepted]


def generate_skills_code(llm, skills=None, *, record_dir: str | Path | None = None,
                         max_rewrites: int = MAX_REWRITES, max_tokens: int = 4096, temperature: float = 0.2,
                         limits: RunLimits = RunLimits(), log=None) -> SkillsCode:
    """Phases 2 and 3 in order; a part not accepted stays the built-in (see the module docstring)."""
    from mmotif.skills.specs import SkillSet

    skills = skills or SkillSet()
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    parts, results = Parts(), {}
    for make in PHASES:
        phase = make(parts, skills)
        result = refine(phase, llm, max_rewrites=max_rewrites, max_tokens=max_tokens, temperature=temperature,
                        limits=limits, record_dir=record_dir, log=log)
        results[phase.name] = result
        if result.accepted:
            phase.accept(result.code)
    source, _ = checked_policy(parts.sources(), skills, "skills-code", seed=0)
    code = SkillsCode(source, dict(parts.origin), results, model_name(llm))
    for line in code.warnings():
        log(line)
    return code


def _header(code: SkillsCode) -> str:
    state = "generated" if code.fully_generated else "PARTLY BUILT-IN (generation failed its checks)"
    lines = [f"# mmotif skills-code: {state}", f"# model: {code.model}"]
    for name, result in code.results.items():
        lines.append(f"# {name}: {code.origin[name]}; {result.reason}; record: {result.record_path}")
    return "\n".join(" ".join(line.split())[:400] for line in lines) + "\n\n"


def write_skills_code(code: SkillsCode, path: str | Path) -> Path:
    """The training-policy file (loadable by CodePolicy.from_source; `env.training_policy`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_header(code) + code.source)
    return path


def fallback_lines(text: str) -> list[str]:
    """The header lines of a skills-code file that say a part is the built-in."""
    return [line for line in text.splitlines()[:8] if line.startswith("# ") and ": built-in;" in line]


# ---------------------------------------------------------------------------------------
# `mmotif run` and `mmotif skills-code`
# ---------------------------------------------------------------------------------------
def _skill_set(cfg):
    from mmotif.skills.specs import SkillSet

    return SkillSet(skills=tuple(cfg.skills))


def resolve_training_policy(cfg, llm=None, log=None):
    """`cfg` with `env.training_policy_code` set, so that every actor builds the same policy
    without reading a file: ``generate`` has the coder write it into <run_dir>/skills_code/
    (reused when the run folder has it already, e.g. on --resume); a file is read here. A part
    that is the built-in because its generation failed is said in one warning line."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    env = cfg.env
    if env.training_policy_code is not None or env.training_policy.startswith("builtin:"):
        return cfg
    if env.training_policy == GENERATED_TRAINING_POLICY:
        text = _generated_for_run(cfg, llm, log)
    else:
        path = Path(env.training_policy)
        text = path.read_text()
        for line in fallback_lines(text):
            log(f"WARNING: {path} holds a built-in part, its generation failed its checks: {line[2:]}")
    return with_overrides(cfg, {"env": {"training_policy_code": text}}, "env.training_policy")


def _generated_for_run(cfg, llm, log) -> str:
    folder = Path(cfg.paths.run_dir).expanduser() / "skills_code"
    path = folder / GENERATED_FILE
    if path.is_file():
        text = path.read_text()
        log(f"mmotif run: training policy: this run's generated code, {path}")
        for line in fallback_lines(text):
            log(f"WARNING: the run's generated code has a built-in part (its generation failed its checks): "
                f"{line[2:]}")
        return text
    if llm is None:
        from mmotif.llm import backend_from_config

        llm = backend_from_config(cfg.coder, section="coder", cache_dir=cfg.paths.model_cache)
    log(f"mmotif run: the coder ({model_name(llm)}) writes the skills' code into {folder}")
    code = generate_skills_code(llm, _skill_set(cfg), record_dir=folder / "generations",
                                max_rewrites=cfg.coder.max_rewrites, max_tokens=cfg.coder.max_tokens,
                                temperature=cfg.coder.temperature, log=log)
    write_skills_code(code, path)
    return path.read_text()


def cmd_skills_code(args, llm=None) -> int:
    """`mmotif skills-code`: write the training-policy file. Exit 0 when every part was
    generated and accepted, 1 when a part fell back to its built-in (the file says which)."""
    from mmotif.codegen.generate import _make_llm, coder_config

    coder, cache = coder_config(args)
    cfg = resolve_config(args.config, args.preset, sets=args.set or ())[0]
    llm = llm or _make_llm(coder, cache)
    out = Path(args.out)
    code = generate_skills_code(llm, _skill_set(cfg), record_dir=out / "generations", max_rewrites=coder.max_rewrites,
                                max_tokens=coder.max_tokens, temperature=coder.temperature)
    path = write_skills_code(code, out / GENERATED_FILE)
    for name, result in code.results.items():
        print(f"{name}: {code.origin[name]} ({result.reason}); record: {result.record_path}")
    print(f"training policy: {path}\nuse it with: --set env.training_policy={path}")
    return 0 if code.fully_generated else 1
