"""Gradient-cached InfoNCE (GradCache, Gao et al. 2021): large contrastive batches in bounded memory.

1. embed every mini-batch without a graph (RNG state recorded), 2. compute the loss on the full embedding
matrix and its gradient w.r.t. the embeddings, 3. re-embed each mini-batch with a graph (same RNG state, so
dropout matches) and back-propagate the cached embedding gradient. Equal to the uncached loss and gradients.
Each mini-batch is padded only to its own longest text; with `sort_by_length` the mini-batches are cut from the
length-sorted texts (`mtpf.data.padding`): the same loss for less padding.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch

from mtpf.data.padding import length_sorted_chunks, restore_order, trim_padding
from mtpf.losses.info_nce import InfoNCELoss

Features = dict[str, torch.Tensor]


class RngState:
    """CPU (and CUDA) generator states, to replay a forward pass with identical dropout masks."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.cpu = torch.get_rng_state()
        self.devices = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def replay(self):
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, device)
            yield


def split_features(features: Features, size: int) -> list[Features]:
    """Consecutive mini-batches of `size` rows, each trimmed to its own longest row."""
    total = len(next(iter(features.values())))
    return [trim_padding({k: v[start : start + size] for k, v in features.items()}) for start in range(0, total, size)]


class EmbeddingStep(Protocol):
    """What GradCache needs of a training step (`mtpf.tasks.base.TaskStep` is one)."""

    def forward(self, features: Features) -> torch.Tensor: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def no_sync(self) -> contextlib.AbstractContextManager: ...


class CachedInfoNCE:
    """Runs forward and backward itself; returns the (detached) loss.

    Args:
        loss: the InfoNCE to compute on the full batch.
        mini_batch_size: texts embedded at once with a graph.
        sort_by_length: cut the mini-batches from the texts sorted by length, each trimmed to its own longest.
    """

    def __init__(self, loss: InfoNCELoss, mini_batch_size: int, sort_by_length: bool = False) -> None:
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size={mini_batch_size} must be at least 1.")
        self.loss = loss
        self.mini_batch_size = mini_batch_size
        self.sort_by_length = sort_by_length

    def __call__(self, step: EmbeddingStep, texts: Features, num_pairs: int, scale: float = 1.0) -> torch.Tensor:
        """`texts` holds the anchors (first `num_pairs` rows) then the positives; `step` embeds a mini-batch and runs
        backward (without gradient synchronisation but for the last mini-batch)."""
        embed, backward, no_sync = step.forward, step.backward, step.no_sync
        if self.sort_by_length:
            chunks, order = length_sorted_chunks(texts, self.mini_batch_size)
        else:
            chunks, order = split_features(texts, self.mini_batch_size), None
        states, embedded = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(RngState(list(chunk.values())))
                embedded.append(embed(chunk))
        produced = torch.cat(embedded).detach().requires_grad_(True)  # rows in the order the chunks hold them
        full = produced if order is None else restore_order(produced, order)
        loss = self.loss(full[:num_pairs], full[num_pairs:]) * scale
        (cached,) = torch.autograd.grad(loss, produced)
        cached_chunks = cached.split([len(e) for e in embedded])
        for index, (chunk, state, grad) in enumerate(zip(chunks, states, cached_chunks)):
            last = index == len(chunks) - 1
            with state.replay(), contextlib.nullcontext() if last else no_sync():
                backward((embed(chunk) * grad.to(embedded[index].dtype)).sum())
        return loss.detach()
