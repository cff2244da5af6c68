"""TC batches: step -> this rank's slice of a hierarchically sampled batch of text pairs, tokenized."""

from __future__ import annotations

import numpy as np
import torch

from mtpf.data.pairs import PairSource
from mtpf.data.sampling import HierarchicalBatchSampler
from mtpf.data.steps import rank_slice
from mtpf.tasks.base import TaskContext


class TcBatches:
    """Step -> tokenized (anchors then positives) of this rank's slice of a hierarchically sampled batch."""

    def __init__(
        self,
        sources: list[PairSource],
        context: TaskContext,
        batch_size: int,
        *,
        max_length: int = 128,
        temperature: float = 1.0,
    ) -> None:
        """`context` gives the tokenizer, the sampler's seed and this process's rank and world size; `temperature` is
        the dataset draw's (size ** (1 / T))."""
        tokenizer, seed = context.tokenizer, context.seed
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
        self.rank, self.world_size = context.rank, context.world_size
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
