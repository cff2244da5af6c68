"""Weight-space interpolation of a release's backbone towards the encoder it was pre-finetuned from.

WiSE-FT (Wortsman et al. 2022) and LM-Cocktail (Xiao et al. 2023): θ = (1 − α)·θ_base + α·θ_pre-finetuned. α = 1 is
the release as trained, α = 0 the untouched base. A strong base (all-MiniLM-L6-v2 was contrastively trained on
~1B pairs) loses classification quality to a few hundred multi-task steps; averaging the weights keeps part of
each. Only the shared backbone moves: the task slots stay as trained (they are small deltas on top), and their
base digests are rewritten so that they belong to the new backbone.

`layer_alphas` gives one α per position of the encoder: the embeddings, then each transformer layer in order
(whatever is neither, such as a pooler, takes the last layer's α), so lower layers can stay nearer the base.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from configuration_mtpf import backbone_layout
from modeling_mtpf import MtpfModel
from mtpf.release import (
    BACKBONE_DIR,
    ReleaseError,
    check_release_target,
    export_release,
    load_encoder,
    validate_release,
)

logger = logging.getLogger(__name__)


def base_of(release: str | os.PathLike) -> str:
    """The encoder a release was pre-finetuned from, as its config records it (`pretraining.backbone`)."""
    config = MtpfModel.config_class.from_pretrained(str(Path(release) / BACKBONE_DIR))
    base = (config.pretraining or {}).get("backbone")
    if not base:
        raise ReleaseError(f"{release}: its config records no pre-finetuning base (pretraining.backbone); pass --base.")
    return base


def alpha_per_parameter(
    names: list[str], num_layers: int, layers_prefix: str, alpha: float, layer_alphas: list[float] | None
) -> dict[str, float]:
    """Each backbone parameter's α: `alpha` everywhere, or by position (embeddings, layer 0, ..., layer L-1)."""
    if layer_alphas is None:
        return dict.fromkeys(names, alpha)
    if len(layer_alphas) != num_layers + 1:
        raise ValueError(
            f"layer_alphas: {len(layer_alphas)} values given; this backbone needs {num_layers + 1} "
            f"(the embeddings, then each of its {num_layers} layers)."
        )
    pattern = re.compile(rf"(^|\.){re.escape(layers_prefix)}\.(\d+)\.")
    alphas = {}
    for name in names:
        match = pattern.search(name)
        if match:
            alphas[name] = layer_alphas[1 + int(match.group(2))]
        elif "embeddings" in name:
            alphas[name] = layer_alphas[0]
        else:
            alphas[name] = layer_alphas[-1]
    return alphas


@torch.no_grad()
def interpolate_backbone(
    model: MtpfModel, base_state: dict[str, torch.Tensor], alpha: float, layer_alphas: list[float] | None = None
) -> None:
    """In place: every floating-point backbone weight becomes (1 − α)·base + α·itself (integer buffers are kept)."""
    for value in [alpha, *(layer_alphas or [])]:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"alpha {value}: must be between 0 (the base) and 1 (the release as trained).")
    own = model.backbone.state_dict()
    if set(own) != set(base_state) or any(own[k].shape != base_state[k].shape for k in own):
        raise ValueError("The base encoder's weights do not have the release backbone's names and shapes.")
    layout = backbone_layout(model.config.backbone_config.model_type)
    alphas = alpha_per_parameter(list(own), model.config.num_layers, layout["layers"], alpha, layer_alphas)
    for name, tensor in own.items():
        if tensor.is_floating_point():
            tensor.copy_(torch.lerp(base_state[name].to(tensor.dtype), tensor, alphas[name]))


@dataclass(frozen=True)
class Interpolation:
    """θ = (1 − α)·θ_base + α·θ_release: `alpha` for every backbone weight, or `layer_alphas` one per layer (the
    embeddings take `alpha`); `base` defaults to the encoder the release was trained from."""

    alpha: float
    layer_alphas: list[float] | None = None
    base: str | None = None


def interpolate_release(
    release: str | os.PathLike, output: str | os.PathLike, interpolation: Interpolation, *, overwrite: bool = False
) -> Path:
    """A new release: `release`'s backbone interpolated towards the base, its slots unchanged; recorded in the config
    as `pretraining.interpolation`."""
    alpha, layer_alphas, base = interpolation.alpha, interpolation.layer_alphas, interpolation.base
    tasks = validate_release(release)
    output = check_release_target(output, overwrite)
    base = base or base_of(release)
    backbone_dir = Path(release) / BACKBONE_DIR
    model = MtpfModel.from_pretrained(str(backbone_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(backbone_dir))
    base_encoder, _ = load_encoder(base)
    interpolate_backbone(model, base_encoder.state_dict(), alpha, layer_alphas)
    model.config.pretraining = {
        **(model.config.pretraining or {}),
        "interpolation": {"base": base, "alpha": alpha, **({"layer_alphas": layer_alphas} if layer_alphas else {})},
    }
    logger.info("Backbone of %s interpolated towards %s (alpha %s)", release, base, layer_alphas or alpha)
    return export_release(model.load_task_adapters(tasks), tokenizer, output, overwrite=overwrite)
