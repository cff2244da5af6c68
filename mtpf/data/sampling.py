"""Hierarchical sampling for contrastive pre-finetuning: draw a dataset first, then a batch from it.

Every batch comes from one dataset (in-batch negatives from the same domain are harder and batches stay
homogeneous, as in E5/Jina), and holds no text twice (a duplicate would be a false negative).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence

import numpy as np

from mtpf.errors import MtpfError

logger = logging.getLogger(__name__)


def text_key(text: str) -> int:
    """A hash of a text that is the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class DuplicateBatchError(MtpfError, ValueError):
    """No dataset can fill a batch of distinct texts."""


class HierarchicalBatchSampler:
    """Batches of indices into the concatenation of several pair datasets.

    Args:
        pairs: per dataset, its (anchor, positive) texts.
        batch_size: pairs per batch (the global batch under data parallelism).
        seed: the same seed gives the same batches in every process.
        temperature: dataset drawn with probability proportional to (remaining pairs) ** (1 / temperature);
            1 is size-proportional, larger values flatten towards uniform.
        names: dataset names for messages.
    """

    def __init__(
        self,
        pairs: Sequence[Sequence[tuple[str, str]]],
        batch_size: int,
        seed: int = 0,
        temperature: float = 1.0,
        names: Sequence[str] | None = None,
    ) -> None:
        if batch_size < 2:
            raise ValueError(f"batch_size={batch_size}: in-batch negatives need at least 2 pairs per batch.")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be positive.")
        self.batch_size = batch_size
        self.seed = seed
        self.temperature = temperature
        self.names = list(names or [f"dataset{i}" for i in range(len(pairs))])
        self.keys = [
            np.array([(text_key(a), text_key(p)) for a, p in rows], dtype=np.uint64).reshape(-1, 2) for rows in pairs
        ]
        self.offsets = np.cumsum([0] + [len(rows) for rows in pairs])[:-1]
        self.usable = self._usable_datasets()
        self._lengths: dict[int, int] = {}

    def _usable_datasets(self) -> list[int]:
        usable = []
        for index, keys in enumerate(self.keys):
            distinct = len(np.unique(keys))
            if distinct >= 2 * self.batch_size:
                usable.append(index)
            else:
                logger.warning(
                    "Pair dataset %r is left out: %d distinct texts cannot fill a batch of %d pairs (needs %d).",
                    self.names[index],
                    distinct,
                    self.batch_size,
                    2 * self.batch_size,
                )
        if not usable:
            raise DuplicateBatchError(
                f"No pair dataset can fill a batch of {self.batch_size} pairs with distinct texts "
                f"({', '.join(self.names)}); lower the batch size or add data."
            )
        return usable

    def epoch_length(self, epoch: int) -> int:
        if epoch not in self._lengths:
            self._lengths[epoch] = sum(1 for _ in self.epoch_batches(epoch))
        return self._lengths[epoch]

    def epoch_batches(self, epoch: int) -> Iterator[list[int]]:
        """All batches of one epoch, deterministic in (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        queues = {d: list(rng.permutation(len(self.keys[d]))) for d in self.usable}
        while True:
            open_datasets = [d for d in self.usable if len(queues[d]) >= self.batch_size]
            if not open_datasets:
                return
            weights = np.array([len(queues[d]) for d in open_datasets], dtype=float) ** (1.0 / self.temperature)
            dataset = open_datasets[rng.choice(len(open_datasets), p=weights / weights.sum())]
            rows = self._take_distinct(dataset, queues)
            if rows is None:
                queues[dataset] = []  # what is left repeats texts already drawn: this dataset is done
                continue
            yield [int(self.offsets[dataset] + row) for row in rows]

    def _take_distinct(self, dataset: int, queues: dict[int, list[int]]) -> list[int] | None:
        """Pop `batch_size` rows with no text in common; rows that clash go back for a later batch."""
        queue, keys = queues[dataset], self.keys[dataset]
        seen: set[int] = set()
        chosen: list[int] = []
        deferred: list[int] = []
        while queue and len(chosen) < self.batch_size:
            row = queue.pop()
            anchor, positive = (int(k) for k in keys[row])
            if anchor in seen or positive in seen:
                deferred.append(row)
                continue
            seen.update((anchor, positive))
            chosen.append(row)
        queue.extend(deferred)
        return chosen if len(chosen) == self.batch_size else None
