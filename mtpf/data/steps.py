"""Per-step multi-task batches: item `i` of the dataset is everything optimizer micro-step `i` trains on.

Indexing by step makes the data a pure function of (seed, step): every rank draws the same task and the same
TC dataset at the same step (each takes its own slice of the global batch), and resuming from a checkpoint at
step k skips k indices without building a single batch.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import Dataset as TorchDataset
from transformers import PreTrainedTokenizerBase

from mtpf.data.pairs import PairSource
from mtpf.data.sampling import HierarchicalBatchSampler
from mtpf.data.tokens import tokenize_words

TASK_ORDER = ("ner", "tc")


def rank_slice(rows: list[int], batch_size: int, rank: int, world_size: int) -> list[int]:
    if batch_size % world_size:
        raise ValueError(f"The global batch of {batch_size} does not split evenly over {world_size} processes.")
    local = batch_size // world_size
    return rows[rank * local : (rank + 1) * local]


class TcBatches:
    """Step -> tokenized (anchors then positives) of this rank's slice of a hierarchically sampled batch."""

    def __init__(
        self,
        sources: list[PairSource],
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int,
        max_length: int = 128,
        seed: int = 0,
        temperature: float = 1.0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.anchors = [text for source in sources for text in source.dataset["anchor"]]
        self.positives = [text for source in sources for text in source.dataset["positive"]]
        offsets = np.cumsum([0] + [len(source.dataset) for source in sources])
        pairs = [
            list(zip(self.anchors[offsets[i] : offsets[i + 1]], self.positives[offsets[i] : offsets[i + 1]]))
            for i in range(len(sources))
        ]
        self.sampler = HierarchicalBatchSampler(
            pairs, batch_size, seed=seed, temperature=temperature, names=[s.name for s in sources]
        )
        self.tokenizer, self.batch_size, self.max_length = tokenizer, batch_size, max_length
        self.rank, self.world_size = rank, world_size
        self._epoch, self._epoch_start, self._batches = 0, 0, list(self.sampler.epoch_batches(0))

    def global_batch(self, index: int) -> list[int]:
        if index < self._epoch_start:  # going back (a fresh resume): replay epochs from the start
            self._epoch, self._epoch_start, self._batches = 0, 0, list(self.sampler.epoch_batches(0))
        while index >= self._epoch_start + len(self._batches):
            self._epoch_start += len(self._batches)
            self._epoch += 1
            self._batches = list(self.sampler.epoch_batches(self._epoch))
        return self._batches[index - self._epoch_start]

    def __call__(self, index: int) -> dict[str, torch.Tensor]:
        rows = rank_slice(self.global_batch(index), self.batch_size, self.rank, self.world_size)
        texts = [self.anchors[r] for r in rows] + [self.positives[r] for r in rows]
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        return dict(encoded)


class NerBatches:
    """Step -> this rank's slice of a shuffled batch of pseudo-labelled sentences (labels on first sub-tokens)."""

    def __init__(
        self,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int,
        max_length: int = 128,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(dataset) < batch_size:
            raise ValueError(
                f"The pseudo-labelled corpus has {len(dataset)} sentences, fewer than one batch of {batch_size}."
            )
        self.words, self.labels = dataset["words"], dataset["labels"]
        self.tokenizer, self.batch_size, self.max_length, self.seed = tokenizer, batch_size, max_length, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = len(dataset) // batch_size

    def global_batch(self, index: int) -> list[int]:
        epoch, position = divmod(index, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.words))
        return order[position * self.batch_size : (position + 1) * self.batch_size].tolist()

    def __call__(self, index: int) -> dict[str, torch.Tensor]:
        rows = rank_slice(self.global_batch(index), self.batch_size, self.rank, self.world_size)
        return dict(
            tokenize_words(
                self.tokenizer, [self.words[r] for r in rows], [self.labels[r] for r in rows], self.max_length
            )
        )


class TaskSchedule:
    """Which tasks run at each micro-step: both every step, or strict alternation in a ratio (e.g. 1:3)."""

    def __init__(self, tasks: tuple[str, ...], schedule: str = "both", ratio: str = "1:1") -> None:
        if schedule not in ("both", "alternate"):
            raise ValueError(f"task_schedule must be 'both' or 'alternate', got {schedule!r}.")
        self.tasks = tuple(task for task in TASK_ORDER if task in tasks)
        counts = dict(zip(TASK_ORDER, (int(part) for part in ratio.split(":"))))
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
    def __init__(self, num_steps: int, schedule: TaskSchedule, batches: dict[str, TcBatches | NerBatches]) -> None:
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
