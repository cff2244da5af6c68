"""The registry of pre-finetuning tasks: name -> Task class (as peft maps a PEFT type to its config class).

from mtpf.tasks import register_task, get_task
register_task(MyTask)          # a class with `name`; its folder holds batches, loss and step
get_task("ner")                # NerTask; an unknown name is an error that lists the known ones
"""

from __future__ import annotations

from mtpf.tasks.base import StepBatches, Task, TaskContext, TaskStep

TASKS: dict[str, type[Task]] = {}
DEFAULT_SLOTS = ("ner", "tc")  # every release carries these two slots, trained or not


def register_task(task: type[Task]) -> type[Task]:
    """Add a task class under its `name` (usable as a decorator); a second class under one name is an error."""
    if TASKS.get(task.name, task) is not task:
        raise ValueError(f"A task named {task.name!r} is already registered ({TASKS[task.name].__name__}).")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; registered tasks: {sorted(TASKS)}.")
    return TASKS[name]


def task_order(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`names` in registration order (ner, tc, then later ones), each checked against the registry."""
    for name in names:
        get_task(name)
    return tuple(name for name in TASKS if name in names)


def result_families() -> dict[str, tuple[str, str]]:
    """Result family -> (Hub pipeline tag, title), from the registered tasks' downstream protocols."""
    return {
        task.result_family: (task.family_tag, task.family_title)
        for task in TASKS.values()
        if task.result_family is not None
    }


# The built-in tasks, in this order (the order of slots, schedules and tables).
from mtpf.tasks.ner.task import NerTask  # noqa: E402
from mtpf.tasks.tc.task import TcTask  # noqa: E402

register_task(NerTask)
register_task(TcTask)

__all__ = [
    "DEFAULT_SLOTS",
    "TASKS",
    "NerTask",
    "StepBatches",
    "Task",
    "TaskContext",
    "TaskStep",
    "TcTask",
    "get_task",
    "register_task",
    "result_families",
    "task_order",
]
