"""InfoNCE with in-batch negatives on L2-normalised embeddings (paper Sec. 4), negatives gathered across ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows; gradients flow back to the rank that produced them."""
    _, world_size = world()
    if world_size == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


class InfoNCELoss(nn.Module):
    """-log softmax of each anchor's similarity to its own positive against every positive in the (global) batch.

    With W ranks of B local pairs each, local anchors are scored against all W*B positives and the labels are
    offset by rank, so the mean over ranks (DDP's gradient average) equals the loss of one W*B batch.
    """

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be positive.")
        self.temperature = temperature

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        if anchors.shape != positives.shape:
            raise ValueError(f"anchors {tuple(anchors.shape)} and positives {tuple(positives.shape)} differ in shape.")
        anchors = F.normalize(anchors.float(), dim=-1)
        candidates = gather_with_grad(F.normalize(positives.float(), dim=-1))
        rank, _ = world()
        labels = torch.arange(len(anchors), device=anchors.device) + rank * len(anchors)
        return F.cross_entropy(anchors @ candidates.T / self.temperature, labels)
