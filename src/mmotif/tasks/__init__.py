"""The paper's tasks (spec §10-§12, §15.2): catalog, success rules, tracker, dungeon probe,
price tables and reference policies.

- :mod:`~mmotif.tasks.base`: what a task is (:class:`Task`, :class:`SuccessRule`) and the
  starting values generated from its data;
- :mod:`~mmotif.tasks.paper`: one module per task (its data and its one success rule) with
  its reference policy ``<name>.policy.py`` beside it;
- :mod:`~mmotif.tasks.catalog`: the tasks found there, by id, title or alias;
- :mod:`~mmotif.tasks.tracker`: per-episode bookkeeping and the proxy/exact verdicts;
- :mod:`~mmotif.tasks.probe`: the Oracle/Minetown levels read from NetHack's own data;
- :mod:`~mmotif.tasks.prices`: base-price tiers and price identification;
- :mod:`~mmotif.tasks.reference`: the reference policies assembled and loaded.
"""

from mmotif.tasks.base import PaperResult, SuccessRule, Task
from mmotif.tasks.catalog import TASKS, get_task, task_names
from mmotif.tasks.prices import price_identifies
from mmotif.tasks.probe import DungeonProbe
from mmotif.tasks.reference import load_task_policy, reference_policy_source, task_policy
from mmotif.tasks.tracker import TaskTracker

__all__ = [
    "DungeonProbe",
    "PaperResult",
    "SuccessRule",
    "TASKS",
    "Task",
    "TaskTracker",
    "get_task",
    "load_task_policy",
    "price_identifies",
    "reference_policy_source",
    "task_names",
    "task_policy",
]
