"""NER batches: step -> this rank's slice of a shuffled batch of pseudo-labelled sentences."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset

from mtpf.data.steps import rank_slice
from mtpf.data.tokens import tokenize_words
from mtpf.tasks.base import TaskContext


class NerBatches:
    """Step -> this rank's slice of a shuffled batch of pseudo-labelled sentences (labels on first sub-tokens)."""

    def __init__(
        self, dataset: Dataset, context: TaskContext, batch_size: int, *, max_length: int = 128, length_buckets: int = 0
    ) -> None:
        """`context` gives the tokenizer, the seed of the shuffle and this process's rank and world size."""
        if len(dataset) < batch_size:
            raise ValueError(
                f"The pseudo-labelled corpus has {len(dataset)} sentences, fewer than one batch of {batch_size}."
            )
        self.words, self.labels = dataset["words"], dataset["labels"]
        self.tokenizer, self.batch_size, self.max_length, self.seed = (
            context.tokenizer,
            batch_size,
            max_length,
            context.seed,
        )
        self.rank, self.world_size, self.length_buckets = context.rank, context.world_size, length_buckets
        self.batches_per_epoch = len(dataset) // batch_size

    def global_batch(self, index: int) -> list[int]:
        """The sentences of step `index`: a seeded shuffle per epoch, cut into batches.

        With `length_buckets` = B > 1, each run of B batches of the shuffle is sorted by sentence length before it
        is cut (and its B batches are visited in a seeded order), so a batch pads to nearly its own length while
        every sentence is still seen once per epoch.
        """
        epoch, position = divmod(index, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.words))
        if self.length_buckets <= 1:
            return order[position * self.batch_size : (position + 1) * self.batch_size].tolist()
        group, slot = divmod(position, self.length_buckets)
        batches = min(self.length_buckets, self.batches_per_epoch - group * self.length_buckets)
        start = group * self.length_buckets * self.batch_size
        rows = sorted(order[start : start + batches * self.batch_size].tolist(), key=lambda r: len(self.words[r]))
        visit = np.random.default_rng([self.seed, epoch, group]).permutation(batches)[slot]
        return rows[visit * self.batch_size : (visit + 1) * self.batch_size]

    def __call__(self, index: int) -> dict[str, torch.Tensor]:
        rows = rank_slice(self.global_batch(index), self.batch_size, self.rank, self.world_size)
        return dict(
            tokenize_words(
                self.tokenizer, [self.words[r] for r in rows], [self.labels[r] for r in rows], self.max_length
            )
        )
