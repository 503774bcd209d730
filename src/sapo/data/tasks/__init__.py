"""Built-in verifiable tasks that need no download: ``arithmetic`` and ``countdown``.

``get_task(name)`` looks a task up by its name or its ``data_source`` (``sapo/arithmetic``).
"""

from __future__ import annotations

from sapo.data.tasks import arithmetic, countdown
from sapo.data.tasks.base import Knob, Task, generate_splits, make_row

TASKS: dict[str, Task] = {task.name: task for task in (arithmetic.TASK, countdown.TASK)}
TASKS_BY_DATA_SOURCE: dict[str, Task] = {task.data_source: task for task in TASKS.values()}


def get_task(name: str) -> Task:
    """The task called ``name`` (``arithmetic``) or whose data_source is ``name`` (``sapo/arithmetic``)."""
    from sapo.errors import DataError

    task = TASKS.get(name) or TASKS_BY_DATA_SOURCE.get(name)
    if task is None:
        raise DataError(f"unknown built-in task {name!r}: choose one of {', '.join(TASKS)}")
    return task


__all__ = ["Knob", "TASKS", "TASKS_BY_DATA_SOURCE", "Task", "generate_splits", "get_task", "make_row"]
