"""The paper's nine evaluation tasks (spec §10-§12, §15.2), one module each.

A module defines ``TASK`` (:class:`~mmotif.tasks.base.Task`) and, unless the task only
counts events, the ``SuccessRule`` that ``TASK.rule`` names. Its reference policy over skills
(§12.2) lies beside it as ``<name>.policy.py`` (or ``TASK.policy`` names the task whose
policy it shares): package data, a fragment of the NetHackPlayer class body run in the
code-policy sandbox, never imported. Its starting values are generated from ``TASK.initial_values`` and ``TASK.attributes``
(:mod:`mmotif.tasks.reference`). :mod:`mmotif.tasks.catalog` finds the modules here by
itself: adding a task is adding its two files.
"""
