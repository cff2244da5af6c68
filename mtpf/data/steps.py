"""Per-step multi-task batches: item `i` of the dataset is everything optimizer micro-step `i` trains on.

Indexing by step makes the data a pure function of (seed, step): every rank draws the same task and the same
data at the same step (each takes its own slice of the global batch), and resuming from a checkpoint at
step k skips k indices without building a single batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset as TorchDataset


def rank_slice(rows: list[int], batch_size: int, rank: int, world_size: int) -> list[int]:
    if batch_size % world_size:
        raise ValueError(f"The global batch of {batch_size} does not split evenly over {world_size} processes.")
    local = batch_size // world_size
    return rows[rank * local : (rank + 1) * local]


class TaskSchedule:
    """Which tasks run at each micro-step: all of them every step ('both'), or strict alternation in a ratio given
    in the order of `tasks` (e.g. 1:3 for ner:tc)."""

    def __init__(self, tasks: tuple[str, ...], schedule: str = "both", ratio: str = "1:1") -> None:
        if schedule not in ("both", "alternate"):
            raise ValueError(f"task_schedule must be 'both' or 'alternate', got {schedule!r}.")
        self.tasks = tuple(tasks)
        parts = ratio.split(":")
        if schedule == "alternate" and (len(parts) < len(self.tasks) or not all(p.isdigit() for p in parts)):
            raise ValueError(f"task_ratio={ratio!r}: give one whole number per task of {list(self.tasks)}.")
        counts = dict(zip(self.tasks, (int(part) for part in parts)))
        if schedule == "alternate" and len(self.tasks) > 1:
            self.cycle = [task for task in self.tasks for _ in range(counts[task])]
        else:
            self.cycle = [self.tasks]
        self.schedule = schedule

    def tasks_at(self, step: int) -> tuple[str, ...]:
        entry = self.cycle[step % len(self.cycle)]
        return entry if isinstance(entry, tuple) else (entry,)

    def task_index(self, task: str, step: int) -> int:
        """How many earlier micro-steps ran `task` (its own batch counter)."""
        full, rest = divmod(step, len(self.cycle))
        per_cycle = sum(task in self.tasks_at(i) for i in range(len(self.cycle)))
        return full * per_cycle + sum(task in self.tasks_at(i) for i in range(rest))


class MultiTaskStepDataset(TorchDataset):
    def __init__(
        self, num_steps: int, schedule: TaskSchedule, batches: dict[str, Callable[[int], dict[str, torch.Tensor]]]
    ) -> None:
        missing = [task for task in schedule.tasks if task not in batches]
        if missing:
            raise ValueError(f"No batches for the task(s) {missing}.")
        self.num_steps, self.schedule, self.batches = num_steps, schedule, batches

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, step: int) -> dict[str, dict[str, torch.Tensor]]:
        return {task: self.batches[task](self.schedule.task_index(task, step)) for task in self.schedule.tasks_at(step)}


def single_item(items: list):
    """DataLoader collate for batch_size=1 over pre-batched items (keeps SkipBatchSampler cheap on resume)."""
    return items[0]
