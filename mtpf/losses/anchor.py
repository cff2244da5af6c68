"""Anchor (self-distillation) towards the frozen starting encoder: keep what a strong base already embeds well.

A few hundred multi-task steps cannot add much to an encoder contrastively trained on ~1B pairs, but the NER
objective on shared weights can move the sentence embedding away from it (measured: −3.5 TC points on the demo).
The anchor adds λ·mean(1 − cos(e, e_base)) to the task's loss, where e is the trained model's sentence embedding and
e_base the frozen base's embedding of the same texts (sentence-transformers' `MSELoss` "make multilingual" recipe and
BGE-M3's self-distillation pull the same way; on unit vectors ‖e − e_base‖² = 2·(1 − cos)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtpf.data.tokens import model_inputs


class EmbeddingAnchor(nn.Module):
    """λ·mean cosine distance between a batch's embeddings and the frozen base's embeddings of the same features.

    The base is kept out of the optimizer and out of `state_dict` (it is not part of what trains or resumes).
    """

    def __init__(self, base_encoder: nn.Module, weight: float) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"anchor weight {weight}: must be 0 (off) or positive.")
        self.weight = weight
        object.__setattr__(self, "base_encoder", base_encoder.eval().requires_grad_(False))  # not a submodule

    @torch.no_grad()
    def targets(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The frozen base's sentence embeddings of the batch, on the batch's device."""
        inputs = model_inputs(features)
        device = next(iter(inputs.values())).device
        if next(self.base_encoder.parameters()).device != device:
            self.base_encoder.to(device)
        return self.base_encoder(**inputs).pooler_output.float()

    def forward(self, embeddings: torch.Tensor, features: dict[str, torch.Tensor]) -> torch.Tensor:
        distance = 1.0 - F.cosine_similarity(embeddings.float(), self.targets(features), dim=-1)
        return self.weight * distance.mean()
