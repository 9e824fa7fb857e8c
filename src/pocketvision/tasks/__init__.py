"""Task plug-ins: importing this package registers every task.

A task is a package here (``tasks/NAME/``: a ``Task`` subclass with ``@register_task``, its readers, metrics and
runtime hooks) plus one import line below. A task from another distribution registers through the
``pocketvision.tasks`` entry point instead (its module is imported here). Nothing outside ``tasks/`` compares a
task's name: it asks ``get_task(name)``.
"""

import sys
from importlib.metadata import entry_points

from . import classify, keypoints, stylize  # noqa: F401  (registers the tasks)
from .base import (Command, HeldOut, Int8Recipe, Options, OutputSpec, Task, TaskRun, Validation, all_tasks,
                   get_task, register_task, task_names)

ENTRY_POINTS = "pocketvision.tasks"


def _load_plugins() -> None:
    """Import each installed task plug-in; one that fails is named on stderr and left out (the others still work)."""
    for ep in entry_points(group=ENTRY_POINTS):
        try:
            ep.load()
        except Exception as e:  # a third party's module: any error it raises is its own
            print(f"pocketvision: task plug-in {ep.name!r} ({ep.value}) failed to load and is left out: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)


_load_plugins()

__all__ = ["Command", "HeldOut", "Int8Recipe", "Options", "OutputSpec", "Task", "TaskRun", "Validation", "all_tasks",
           "get_task", "register_task", "task_names"]
