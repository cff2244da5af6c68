"""A model under evaluation: a release folder (backbone + trained slots) or any plain encoder.

Every downstream run starts from a fresh copy of the LoRA-free backbone, so one loaded candidate serves all
datasets, fractions and seeds without one run leaking into the next.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from modeling_mtpf import MtpfModel
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
class EvalCandidate:
    name: str  # as the user named it; the `model` field of every result
    backbone: MtpfModel  # base weights only, never modified
    tokenizer: PreTrainedTokenizerBase
    adapters: dict[str, Path] = field(default_factory=dict)  # trained slot -> PEFT adapter folder
    config_hash: str = ""
    path: str = ""  # where it was loaded from (the name unless `LABEL=PATH` was given)

    def fresh_backbone(self) -> MtpfModel:
        return copy.deepcopy(self.backbone)

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


def load_candidate(spec: str) -> EvalCandidate:
    """Load a release (validated, slots found by name) or an encoder (folder, Hub id, `offline:NAME`).

    `LABEL=PATH` names the model LABEL in results and tables (the path is recorded beside it).
    """
    label, name_or_path = split_label(spec)
    candidate = _load(name_or_path)
    candidate.name, candidate.path = label, name_or_path
    return candidate


def candidate_hash(name_or_path: str) -> str:
    """Which weights a model name stands for, from file digests only (no loading): results carry it, so a
    re-trained release under the same label is evaluated again instead of keeping the old scores."""
    if is_release(name_or_path):
        release = Path(name_or_path)
        return release_hash(release, validate_release(release))
    folder = Path(resolve_model_path(name_or_path))
    return short_hash([backbone_digest(folder) if (folder / "model.safetensors").is_file() else name_or_path])


def _load(name_or_path: str) -> EvalCandidate:
    if is_release(name_or_path):
        release = Path(name_or_path)
        tasks = validate_release(release)
        backbone = MtpfModel.from_pretrained(str(release / BACKBONE_DIR))
        tokenizer = AutoTokenizer.from_pretrained(str(release / BACKBONE_DIR))
        adapters = {task: release / ADAPTERS_DIR / task for task in tasks}
        return EvalCandidate(name_or_path, backbone.eval(), tokenizer, adapters, release_hash(release, tasks))
    model, tokenizer = load_mtpf_encoder(name_or_path, tasks=())
    return EvalCandidate(name_or_path, model.eval(), tokenizer, {}, candidate_hash(name_or_path))
