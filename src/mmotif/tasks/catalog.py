"""The task catalog: every module of :mod:`mmotif.tasks.paper` that defines ``TASK``."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from types import MappingProxyType

import mmotif.tasks.paper as paper  # the subpackage itself, not the package API
from mmotif.tasks.base import Task

__all__ = ["TASKS", "get_task", "task_names"]


def _discover() -> Mapping[str, Task]:
    found = []
    for info in pkgutil.iter_modules(paper.__path__):
        task = getattr(importlib.import_module(f"{paper.__name__}.{info.name}"), "TASK", None)
        if not isinstance(task, Task):
            continue
        if task.name != info.name:
            raise ValueError(f"{paper.__name__}.{info.name} defines task {task.name!r}: a task's module bears its name")
        if (task.rule is None) != task.counts_events:
            raise ValueError(f"task {task.name!r}: a {task.kind} task {'has no' if task.rule is None else 'has a'} "
                             f"success rule")
        found.append(task)
    found.sort(key=lambda t: (t.order, t.name))
    return MappingProxyType({t.name: t for t in found})


TASKS: Mapping[str, Task] = _discover()


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def get_task(name: str) -> Task:
    """A task by id (`delphi`), title (`Golden Exit`) or alias, case-insensitive."""
    key = name.strip().lower()
    for task in TASKS.values():
        if key in (task.name, task.title.lower(), *task.aliases):
            return task
    raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
