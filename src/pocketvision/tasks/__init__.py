"""Task plug-ins: importing this package registers every task.

Adding a task means one module here (a ``Task`` subclass with ``@register_task``) plus its data readers;
nothing outside ``tasks/`` compares a task's name: it asks ``get_task(name)``.
"""

from . import classify, keypoints, stylize  # noqa: F401  (registers the tasks)
from .base import (Command, HeldOut, Options, OutputSpec, Task, TaskRun, Validation, all_tasks, get_task,
                   register_task, task_names)

__all__ = ["Command", "HeldOut", "Options", "OutputSpec", "Task", "TaskRun", "Validation", "all_tasks", "get_task",
           "register_task", "task_names"]
