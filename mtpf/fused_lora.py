"""Fused LoRA: one matmul against `W + s·B·A` instead of the base matmul plus a LoRA branch.

PEFT computes a LoRA linear as `x·Wᵀ + s·(x·Aᵀ)·Bᵀ`: two extra thin matmuls (rank r) over every token forward, and
four more in the backward.

- **Training with a trainable backbone** (MTPF-TPL): the backward already computes the full weight gradient `gᵀ·x`;
  from it, the slot's gradients are two small `d×d×r` products (`dB = s·dW·Aᵀ`, `dA = s·Bᵀ·dW`), which autograd
  derives by itself from `F.linear(x, W + s·B·A)`. The same function with the same gradients, for the price of
  forming `s·B·A` once per forward instead of per token.
- **Inference** (eval mode, no gradient), once a model opts in with `set_weight_cache(model, n)` as `mtpf serve`
  does: the effective weight of the active adapter is formed once and cached, so the layer costs what the plain
  linear costs. At batch 1 the two thin matmuls are pure overhead (each is a kernel call of ~18 µs for ~1 µs of
  arithmetic, `bench/serving.py`). The cache holds up to n adapters per layer (least recently used first out; one
  weight copy each) and is dropped when the layer goes back to training. It notices changes to `W`, `A`, `B` or the
  scaling that bump the tensors' version counters or replace them (`load_state_dict`, `copy_`, a foreach optimizer
  step), but not writes through `.data` or a fused optimizer step made in eval mode, which is why it is opt-in
  for models whose weights stay put; call `set_weight_cache` again after such a change.

In inference a mixed batch (`adapter_names`, rows of several adapters) runs each adapter's rows against its cached
merged weight when all of them fit the cache. Every other case (merged weights, disabled adapters, DoRA and other
variants, dropout in training, gradients in eval mode, mixed batches in training or beyond the cache) runs PEFT's
own forward. A frozen backbone (PF-L) does not train through it: there the full weight gradient would be extra work.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

CacheKey = tuple[Any, ...]


class FusedLoraLinear(LoraLinear):
    """PEFT's LoRA `Linear`, whose training forward is one `F.linear` against the effective weight and whose inference
    forward reuses a cached effective weight."""

    max_cached_weights: int = 0  # adapters per layer; off unless `set_weight_cache` turns it on for a model

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._weight_cache: OrderedDict[str, tuple[CacheKey, torch.Tensor]] = OrderedDict()

    def train(self, mode: bool = True) -> FusedLoraLinear:
        if mode:
            self._weight_cache.clear()  # training changes the weights: the cache would only hold stale copies
        return super().train(mode)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._mixed_batch_is_cached(kwargs):
            return self._cached_mixed_batch(x, kwargs["adapter_names"])
        adapter = self._fusable_adapter(kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        if self.training:
            return F.linear(x, base.weight + self._delta(adapter).to(base.weight.dtype), base.bias)
        return F.linear(x, self._cached_weight(adapter, base.weight), base.bias)

    def _inference_with_cache(self) -> bool:
        """Eval mode without a gradient, and the model opted in to the cache."""
        return not self.training and not torch.is_grad_enabled() and self.max_cached_weights > 0

    def _mixed_batch_is_cached(self, kwargs: dict[str, Any]) -> bool:
        """Rows of several adapters (`adapter_names`) in inference, every plain adapter among them fitting the cache."""
        names = kwargs.get("adapter_names")
        if names is None or len(kwargs) > 1 or not self._inference_with_cache() or self.disable_adapters or self.merged:
            return False
        adapters = {name for name in names if name in self.lora_A}
        return len(adapters) <= self.max_cached_weights and not adapters & set(self.lora_variant)

    def _cached_mixed_batch(self, x: torch.Tensor, names: list[str]) -> torch.Tensor:
        """Each adapter's rows against its merged weight (the base weight for `__base__` and for adapters this layer
        lacks, as PEFT's mixed path does): no extra matmul, where PEFT's adds two thin ones per adapter."""
        base = self.get_base_layer()
        output: torch.Tensor | None = None
        for adapter in dict.fromkeys(names):
            rows = [index for index, name in enumerate(names) if name == adapter]
            weight = self._cached_weight(adapter, base.weight) if adapter in self.lora_A else base.weight
            result = F.linear(x[rows], weight, base.bias)
            if output is None:  # the dtype the linear gives (bf16 under autocast), as PEFT's mixed path returns
                output = result.new_empty(*x.shape[:-1], result.shape[-1])
            output[rows] = result
        return output

    def _fusable_adapter(self, kwargs: dict[str, Any]) -> str | None:
        """The one active plain adapter when this forward can be fused (training with a gradient, or inference
        without one), else None."""
        if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
            return None
        if not self.training and not self._inference_with_cache():
            return None  # eval mode with gradients (or with the cache off): PEFT's path
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant:
            return None
        if self.training and not isinstance(self.lora_dropout[active[0]], nn.Identity):
            return None
        return active[0]

    def _delta(self, adapter: str) -> torch.Tensor:
        return (self.lora_B[adapter].weight @ self.lora_A[adapter].weight) * self.scaling[adapter]

    def _cached_weight(self, adapter: str, weight: torch.Tensor) -> torch.Tensor:
        """`W + s·B·A` of `adapter`, formed again only when one of its inputs changed (or it was evicted)."""
        lora_a, lora_b, scaling = self.lora_A[adapter].weight, self.lora_B[adapter].weight, self.scaling[adapter]
        # an in-place change bumps a tensor's version; a new tensor (`.data =`, `.to()`) has a new address
        key = (
            scaling,
            weight.data_ptr(),
            weight._version,
            lora_a.data_ptr(),
            lora_a._version,
            lora_b.data_ptr(),
            lora_b._version,
            weight.device,
        )
        cache = self._weight_cache
        entry = cache.get(adapter)
        if entry is None or entry[0] != key:
            # a plain tensor even under inference_mode, so a later no_grad call may use it too; merged in the
            # weight's own precision even under autocast (which then casts it per forward, as it does `W`)
            with torch.inference_mode(False), torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
                entry = (key, torch.addmm(weight, lora_b.to(weight.dtype), lora_a.to(weight.dtype), alpha=scaling))
            cache[adapter] = entry
        cache.move_to_end(adapter)
        while len(cache) > self.max_cached_weights:
            cache.popitem(last=False)
        return entry[1]

    def delete_adapter(self, adapter_name: str) -> None:
        self._weight_cache.pop(adapter_name, None)
        super().delete_adapter(adapter_name)


def use_fused_linear(config: LoraConfig) -> LoraConfig:
    """Have PEFT build `FusedLoraLinear` for the linears this config targets (PEFT's custom-module hook)."""
    config._register_custom_module({nn.Linear: FusedLoraLinear})
    return config


def set_weight_cache(model: nn.Module, adapters: int) -> int:
    """Cache the effective weights of up to `adapters` adapters in every fused layer of `model` (0: no cache, PEFT's
    unmerged forward in inference), starting empty; returns the number of fused layers."""
    layers = [module for module in model.modules() if isinstance(module, FusedLoraLinear)]
    for layer in layers:
        layer.max_cached_weights = adapters
        layer._weight_cache.clear()
    return len(layers)


def cached_weight_bytes(model: nn.Module) -> int:
    """What caching one adapter's effective weights costs at most: the bytes of every fused layer's base weight."""
    return sum(
        module.get_base_layer().weight.nbytes for module in model.modules() if isinstance(module, FusedLoraLinear)
    )
