"""The reference policies over skills (spec §12.2), assembled and loaded.

A task's reference policy is the built-in exploration class, the built-in initiation and
termination functions, the task's fragment ``paper/<name>.policy.py`` (its ``perform_task``,
attribute setters, and ``task_initial_values`` for state of its own) and a
``set_initial_values`` generated from the task's data (:func:`~mmotif.tasks.base.starting_values_source`).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

from mmotif.skills.code_policy import CodePolicy, builtin_source, combine_parts
from mmotif.tasks.base import Task, starting_values_source
from mmotif.tasks.catalog import get_task

__all__ = ["POLICY_DIR", "load_task_policy", "reference_parts", "reference_policy_source", "task_policy"]

POLICY_DIR = Path(__file__).with_name("paper")
OWN_VALUES = "task_initial_values"


def _task(task: Task | str) -> Task:
    return get_task(task) if isinstance(task, str) else task


def reference_parts(task: Task | str) -> list[tuple[str, str]]:
    """The named parts of `task`'s reference policy, in the order they are combined."""
    task = _task(task)
    path = POLICY_DIR / f"{task.policy or task.name}.policy.py"
    if not path.is_file():
        raise FileNotFoundError(f"task {task.name!r} has no reference policy ({path.name} beside its module)")
    fragment = path.read_text()
    own = any(isinstance(n, ast.FunctionDef) and n.name == OWN_VALUES for n in ast.parse(fragment).body)
    return [
        ("builtin/exploration.py", builtin_source("exploration")),
        ("builtin/initiation_termination.py", builtin_source("initiation_termination")),
        (f"tasks/paper/{path.name}", fragment),
        (f"starting values of {task.name} (generated)",
         starting_values_source(task.initial_values, task.attributes, call_own=own)),
    ]


def reference_policy_source(task: Task | str) -> str:
    """The shipped reference policy of `task` as one source (usable by CodePolicy.from_source)."""
    source, _ = combine_parts(reference_parts(task))
    return source


def _skill_lists(skills) -> tuple[Sequence[str], Sequence[str] | None]:
    if skills is None:
        from mmotif.skills.specs import SkillSet
        skills = SkillSet()
    if hasattr(skills, "names"):
        return skills.names, skills.with_precondition()
    return tuple(skills), None


def task_policy(task: Task | str, skills=None, seed: int | None = None, **kwargs) -> CodePolicy:
    """The shipped reference code policy of `task` (§12.2), dry-run checked."""
    task = _task(task)
    names, pre = _skill_lists(skills)
    kwargs.setdefault("name", f"reference:{task.name}")
    return CodePolicy.from_parts(reference_parts(task), names, pre, seed=seed, **kwargs)


def load_task_policy(task: Task | str, path=None, skills=None, seed: int | None = None, **kwargs) -> CodePolicy:
    """A policy file written by `mmotif plan` (or any complete NetHackPlayer source), or the
    reference policy when `path` is None."""
    if path is None:
        return task_policy(task, skills, seed, **kwargs)
    names, pre = _skill_lists(skills)
    source = Path(path).read_text()
    kwargs.setdefault("name", str(path))
    return CodePolicy.from_source(source, names, pre, seed=seed, **kwargs)
