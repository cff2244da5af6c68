"""Load any model by name — one function, used by evaluation, analysis, serving and export.

A name is a release folder (backbone + trained slots), an encoder folder, a Hub id or `offline:NAME` (a packaged
encoder), optionally as `LABEL=PATH`. A release is validated once; an encoder is wrapped as an MtpfModel with its own
sentence-embedding definition. Every use starts from a fresh copy of the LoRA-free backbone, so one loaded model
serves all datasets, fractions and seeds without one run leaking into the next.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from modeling_mtpf import MtpfModel
from mtpf.fused_lora import use_fused_linear
from mtpf.release import (
    ADAPTERS_DIR,
    BACKBONE_DIR,
    backbone_digest,
    load_mtpf_encoder,
    release_hash,
    short_hash,
    validate_release,
)
from mtpf.weights import resolve_model_path


@dataclass
class LoadedModel:
    name: str  # as the user named it; the `model` field of every result
    backbone: MtpfModel  # base weights only, never modified
    tokenizer: PreTrainedTokenizerBase
    adapters: dict[str, Path] = field(default_factory=dict)  # trained slot -> PEFT adapter folder
    config_hash: str = ""
    path: str = ""  # where it was loaded from (the name unless `LABEL=PATH` was given)

    def fresh_backbone(self) -> MtpfModel:
        return copy.deepcopy(self.backbone)

    def with_slots(self, fused: bool = False) -> PeftModel | MtpfModel:
        """A fresh backbone with every trained slot attached as a named PEFT adapter (the first active).

        `fused` builds the slots' linears as `FusedLoraLinear`, whose inference forward reuses a cached merged weight
        (`mtpf/fused_lora.py`); apps added later on the same layers share that class.
        """
        model = self.fresh_backbone()
        for index, (task, folder) in enumerate(self.adapters.items()):
            config = LoraConfig.from_pretrained(str(folder))
            config = use_fused_linear(config) if fused else config
            if index == 0:
                model = PeftModel.from_pretrained(model, str(folder), adapter_name=task, config=config)
            else:
                config.inference_mode = True
                model.add_adapter(task, config)  # PEFT's load_adapter then only loads the weights into it
                model.load_adapter(str(folder), adapter_name=task)
        return model.eval()

    def encoder_for(self, task: str) -> MtpfModel:
        """The backbone with `task`'s slot merged in (the plain backbone when the model has no such slot)."""
        model = self.fresh_backbone()
        if task in self.adapters:
            model = PeftModel.from_pretrained(model, str(self.adapters[task]), adapter_name=task).merge_and_unload()
        return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def is_release(name_or_path: str) -> bool:
    return (Path(name_or_path) / BACKBONE_DIR).is_dir()


def split_label(spec: str) -> tuple[str, str]:
    """`LABEL=PATH` -> (LABEL, PATH); a bare PATH is its own label."""
    label, _, name_or_path = spec.rpartition("=") if "=" in spec else (spec, "", spec)
    return label, name_or_path


def load_model(spec: str) -> LoadedModel:
    """Load a release (validated, slots found by name) or an encoder (folder, Hub id, `offline:NAME`).

    `LABEL=PATH` names the model LABEL in results and tables (the path is recorded beside it).
    """
    label, name_or_path = split_label(spec)
    loaded = _load(name_or_path)
    loaded.name, loaded.path = label, name_or_path
    return loaded


def model_hash(name_or_path: str) -> str:
    """Which weights a model name stands for, from file digests only (no loading): results carry it, so a
    re-trained release under the same label is evaluated again instead of keeping the old scores."""
    if is_release(name_or_path):
        release = Path(name_or_path)
        return release_hash(release, validate_release(release))
    folder = Path(resolve_model_path(name_or_path))
    return short_hash([backbone_digest(folder) if (folder / "model.safetensors").is_file() else name_or_path])


def _load(name_or_path: str) -> LoadedModel:
    if is_release(name_or_path):
        release = Path(name_or_path)
        tasks = validate_release(release)
        backbone = MtpfModel.from_pretrained(str(release / BACKBONE_DIR))
        tokenizer = AutoTokenizer.from_pretrained(str(release / BACKBONE_DIR))
        adapters = {task: release / ADAPTERS_DIR / task for task in tasks}
        return LoadedModel(name_or_path, backbone.eval(), tokenizer, adapters, release_hash(release, tasks))
    model, tokenizer = load_mtpf_encoder(name_or_path, tasks=())
    return LoadedModel(name_or_path, model.eval(), tokenizer, {}, model_hash(name_or_path))
