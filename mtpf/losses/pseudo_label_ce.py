"""NER distillation loss: cross-entropy of a linear head over k-means pseudo-labels (first sub-tokens only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtpf.data.tokens import IGNORE_INDEX


def pseudo_label_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
