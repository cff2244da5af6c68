"""Less padding without changing the objective: embed a batch in length-sorted chunks, each cut to its own longest.

A contrastive batch's texts are each other's negatives, so they cannot be regrouped across batches by length. But
the order in which one batch's texts go through the encoder does not matter to the loss: sorting them by length,
embedding them in chunks that are each padded only to their own longest text, and putting the embeddings back in
their original order gives the same embeddings (up to float rounding) for far fewer padded positions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Features = dict[str, torch.Tensor]


def trim_padding(features: Features) -> Features:
    """Cut every per-token column after the last position any row attends to (right padding; a left-padded batch
    attends to its last column, so it is left as it is)."""
    mask = features["attention_mask"]
    attended = mask.any(dim=0).nonzero()
    length = int(attended[-1]) + 1 if len(attended) else mask.shape[1]
    return {k: v[:, :length] if v.dim() == 2 and v.shape[1] == mask.shape[1] else v for k, v in features.items()}


def length_sorted_chunks(features: Features, size: int) -> tuple[list[Features], torch.Tensor]:
    """The rows sorted by length (stable) in chunks of `size`, each trimmed; and the order they were taken in."""
    if size < 1:
        raise ValueError(f"chunk size {size} must be at least 1.")
    order = features["attention_mask"].sum(dim=1).argsort(stable=True)
    chunks = [trim_padding({k: v[index] for k, v in features.items()}) for index in order.split(size)]
    return chunks, order


def restore_order(rows: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Rows produced in `order` put back in the batch's original order (differentiable)."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return rows[inverse]


def embed_by_length(embed: Callable[[Features], torch.Tensor], features: Features, size: int) -> torch.Tensor:
    """`embed(features)`, computed as length-sorted chunks of `size` rows under one autograd graph (0: in one go)."""
    if size == 0:
        return embed(features)
    chunks, order = length_sorted_chunks(features, size)
    return restore_order(torch.cat([embed(chunk) for chunk in chunks]), order)
