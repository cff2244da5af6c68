"""Fused LoRA for a trainable backbone: one matmul against `W + s·B·A` instead of the base matmul plus a LoRA branch.

PEFT computes a LoRA linear as `x·Wᵀ + s·(x·Aᵀ)·Bᵀ`: two extra thin matmuls (rank r) over every token forward, and
four more in the backward. When the backbone trains too (MTPF-TPL), the backward already computes the full weight
gradient `gᵀ·x`; from it, the slot's gradients are two small `d×d×r` products (`dB = s·dW·Aᵀ`, `dA = s·Bᵀ·dW`), which
autograd derives by itself from `F.linear(x, W + s·B·A)`. The result is the same function with the same gradients,
for the price of forming `s·B·A` once per forward instead of per token.

Only the training forward of one plain LoRA adapter without dropout is fused; every other case (evaluation, mixed
`adapter_names` batches, merged weights, dropout, DoRA and other variants) runs PEFT's own forward. A frozen backbone
(PF-L) does not use it: there the full weight gradient would be extra work.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn


class FusedLoraLinear(LoraLinear):
    """PEFT's LoRA `Linear`, whose training forward is one `F.linear` against the effective weight."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._fusable_adapter(kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        delta = (self.lora_B[adapter].weight @ self.lora_A[adapter].weight) * self.scaling[adapter]
        return F.linear(x, base.weight + delta.to(base.weight.dtype), base.bias)

    def _fusable_adapter(self, kwargs: dict[str, Any]) -> str | None:
        """The one active plain adapter when this forward can be fused, else None."""
        if not self.training or self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant:
            return None
        if not isinstance(self.lora_dropout[active[0]], nn.Identity):
            return None
        return active[0]


def use_fused_linear(config: LoraConfig) -> LoraConfig:
    """Have PEFT build `FusedLoraLinear` for the linears this config targets (PEFT's custom-module hook)."""
    config._register_custom_module({nn.Linear: FusedLoraLinear})
    return config
