"""The release folder: exactly what goes to the Hub.

    OUT/backbone/          config.json (auto_map), configuration_mtpf.py, modeling_mtpf.py,
                           model.safetensors (base weights only), tokenizer files, sentence-transformers
                           files (modules.json, sentence_bert_config.json, 1_Pooling/, 2_Normalize/)
    OUT/adapters/<task>/   adapter_config.json, adapter_model.safetensors (a standard PEFT adapter)

Written into a temporary sibling folder and renamed into place, so a reader never sees half a release.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import SafetensorError, safe_open
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from configuration_mtpf import DEFAULT_TASKS, MtpfConfig
from modeling_mtpf import MtpfModel
from mtpf.errors import MtpfError
from mtpf.io import atomic_directory, check_output_folder, file_digest, update_json
from mtpf.sentence_embedding import read_sentence_embedding, write_sentence_transformers_files
from mtpf.slots import attach_slots
from mtpf.weights import resolve_model_path

logger = logging.getLogger(__name__)

BACKBONE_DIR = "backbone"
ADAPTERS_DIR = "adapters"
BACKBONE_FILES = ("config.json", "configuration_mtpf.py", "modeling_mtpf.py", "model.safetensors")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_KEY_MARKERS = ("lora_", "base_layer")
BASE_MARKER = "mtpf_base.json"  # in each adapter folder: the digest of the backbone weights it was made with
# Relative to an adapter folder: where the backbone of the same release sits (publishing swaps in a repo id).
LOCAL_ADAPTER_BASE = f"../../{BACKBONE_DIR}"


class ReleaseError(MtpfError, ValueError):
    """A release folder that is incomplete, unreadable or inconsistent."""


def load_encoder(name_or_path: str) -> tuple[AutoModel, PreTrainedTokenizerBase]:
    """A pretrained encoder and its tokenizer (folder, Hub id or `offline:<name>`), safetensors weights only."""
    name_or_path = resolve_model_path(name_or_path)
    encoder = AutoModel.from_pretrained(name_or_path, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return encoder, tokenizer


def mtpf_model_from_encoder(
    encoder: AutoModel,
    tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS,
    tpl_layers: int = 2,
    sentence_embedding: dict | None = None,
    **slot_kwargs,
) -> MtpfModel:
    """Wrap a loaded encoder's weights in an MtpfModel with one slot per task (and the base's sentence-embedding
    definition: pooling, normalize, max_seq_length)."""
    config = MtpfConfig.from_backbone(
        encoder.config, tasks=tasks, tpl_layers=tpl_layers, sentence_embedding=sentence_embedding, **slot_kwargs
    )
    model = MtpfModel(config)
    model.backbone.load_state_dict(encoder.state_dict(), strict=True)
    return model


def load_mtpf_encoder(
    name_or_path: str, tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS, **slot_kwargs
) -> tuple[MtpfModel, PreTrainedTokenizerBase]:
    """Any encoder (folder, Hub id, `offline:NAME`) as an MtpfModel that embeds sentences as the encoder's own
    sentence-transformers files say (defaults without them), plus its tokenizer."""
    encoder, tokenizer = load_encoder(name_or_path)
    settings = read_sentence_embedding(_sentence_transformers_folder(resolve_model_path(name_or_path)))
    return mtpf_model_from_encoder(encoder, tasks=tasks, sentence_embedding=settings, **slot_kwargs), tokenizer


def _sentence_transformers_folder(name_or_path: str) -> Path:
    """The local folder holding an encoder's sentence-transformers files (fetched from the Hub for a repo id)."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    patterns = ["modules.json", "sentence_bert_config.json", "1_Pooling/config.json"]
    return Path(snapshot_download(name_or_path, allow_patterns=patterns))


def init_release(
    backbone: str,
    output: str | os.PathLike,
    tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS,
    *,
    overwrite: bool = False,
    **slot_shape: Any,
) -> Path:
    """An initial release of any encoder: its weights unchanged, fresh (identity) LoRA slots shaped by `slot_shape`
    (`load_mtpf_encoder`'s: tpl_layers=2, r=32, lora_alpha=64, lora_dropout=0.0, target_modules, layers_by_task)."""
    check_release_target(output, overwrite)  # before the encoder is loaded: refuse early
    model, tokenizer = load_mtpf_encoder(backbone, tasks=tasks, **slot_shape)
    return export_release(attach_slots(model, list(tasks)), tokenizer, output, overwrite=overwrite)


def check_release_target(output: str | os.PathLike, overwrite: bool) -> Path:
    """Where a release may be written: a new or empty folder, or (with `overwrite`) an existing release."""
    return check_output_folder(output, overwrite, f"{BACKBONE_DIR}/config.json", "a release", ReleaseError)


def export_release(
    peft_model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    output: str | os.PathLike,
    adapter_base: str = LOCAL_ADAPTER_BASE,
    overwrite: bool = False,
) -> Path:
    """Write `OUT/backbone` (LoRA-free base weights) and `OUT/adapters/<task>` atomically (an existing release
    is replaced only with `overwrite`; any other non-empty folder never)."""
    tasks = list(peft_model.peft_config)
    output = check_release_target(output, overwrite)
    with atomic_directory(output) as staging:
        backbone = copy.deepcopy(peft_model).unload()
        for task in tasks:
            backbone.config.task_slots[task]["adapter"] = f"../{ADAPTERS_DIR}/{task}"
        backbone.config.max_seq_length = backbone.sentence_max_length(tokenizer)  # one number, here and in ST's
        backbone.save_pretrained(staging / BACKBONE_DIR, safe_serialization=True)
        tokenizer.save_pretrained(staging / BACKBONE_DIR)
        write_sentence_transformers_files(staging / BACKBONE_DIR, backbone.config, backbone.config.max_seq_length)
        marker = json.dumps({"backbone_sha256": backbone_digest(staging / BACKBONE_DIR)}, indent=2) + "\n"
        for task in tasks:
            adapter_dir = save_adapter(peft_model, task, staging / ADAPTERS_DIR, adapter_base)
            (adapter_dir / BASE_MARKER).write_text(marker, encoding="utf-8")
    validate_release(output)
    logger.info("Release written to %s (tasks: %s)", output, ", ".join(tasks))
    return output


def save_adapter(peft_model: PeftModel, task: str, adapters_dir: Path, adapter_base: str) -> Path:
    """Save one slot as a standard PEFT adapter folder whose base points at the release's backbone."""
    scratch = adapters_dir / f".{task}.scratch"
    peft_model.save_pretrained(str(scratch), selected_adapters=[task], safe_serialization=True)
    saved = scratch / task if (scratch / task).is_dir() else scratch
    target = adapters_dir / task
    saved.rename(target)
    shutil.rmtree(scratch, ignore_errors=True)  # PEFT's generic README; publishing writes real cards
    update_json(target / "adapter_config.json", lambda config: config.update(base_model_name_or_path=adapter_base))
    return target


def load_release(
    release_dir: str | os.PathLike,
    tasks: list[str] | None = None,
    is_trainable: bool = False,
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The backbone with its task slots attached (first task active) and its tokenizer."""
    validate_release(release_dir)
    backbone_dir = Path(release_dir) / BACKBONE_DIR
    model = MtpfModel.from_pretrained(str(backbone_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(backbone_dir))
    return model.load_task_adapters(tasks, is_trainable=is_trainable), tokenizer


def validate_release(release_dir: str | os.PathLike) -> list[str]:
    """Check a release folder before anyone loads or uploads it; return its task names."""
    release_dir = Path(release_dir)
    backbone_dir = release_dir / BACKBONE_DIR
    for name in BACKBONE_FILES:
        if not (backbone_dir / name).is_file():
            raise ReleaseError(f"{backbone_dir / name}: missing from the release.")
    config = MtpfConfig.from_pretrained(str(backbone_dir))
    check_base_weights(backbone_dir / "model.safetensors")
    model = None
    for task in config.task_slots:
        adapter_dir = release_dir / ADAPTERS_DIR / task
        for name in ADAPTER_FILES:
            if not (adapter_dir / name).is_file():
                raise ReleaseError(f"{adapter_dir / name}: missing from the release (slot {task!r}).")
        if model is None:
            with torch.device("meta"):  # module shapes only: no weights allocated or initialised
                model = MtpfModel(config)
        model.check_adapter_weights(str(adapter_dir))
    check_adapter_bases(release_dir, list(config.task_slots))
    return list(config.task_slots)


def check_adapter_bases(release: Path, tasks: list[str]) -> None:
    """Every adapter must have been exported with this very backbone (its weights' digest is recorded)."""
    digest = backbone_digest(release / BACKBONE_DIR)
    for task in tasks:
        marker = release / ADAPTERS_DIR / task / BASE_MARKER
        if not marker.is_file():
            raise ReleaseError(f"{marker}: missing; cannot tell which backbone this adapter was made for.")
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8")).get("backbone_sha256")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
            raise ReleaseError(f"{marker}: not readable ({err}).") from err
        if recorded != digest:
            raise ReleaseError(
                f"{marker}: adapter {task!r} was made for another backbone (digest {recorded} != {digest}); "
                "an adapter only works on the backbone it was trained with."
            )


def release_hash(release: Path, tasks: list[str]) -> str:
    """Which weights a release holds (backbone and adapter file digests): results carry it as `config_hash`."""
    adapters = [file_digest(release / ADAPTERS_DIR / task / "adapter_model.safetensors") for task in tasks]
    return short_hash([backbone_digest(release / BACKBONE_DIR), *adapters])


def short_hash(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def count_parameters(weights: Path) -> int:
    """Number of values in a safetensors file, read from its header only."""
    with safe_open(str(weights), framework="pt") as handle:
        return sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())  # noqa: SIM118


def release_summary(release_dir: str | os.PathLike) -> dict:
    """Slots and parameter counts of a release (for `mtpf info` and notes)."""
    release_dir = Path(release_dir)
    tasks = validate_release(release_dir)
    config = MtpfConfig.from_pretrained(str(release_dir / BACKBONE_DIR))
    slots = {}
    for task in tasks:
        weights = release_dir / ADAPTERS_DIR / task / "adapter_model.safetensors"
        slots[task] = {**config.task_slots[task], "parameters": count_parameters(weights)}
    return {
        "model_type": config.backbone_config.model_type,
        "backbone_parameters": count_parameters(release_dir / BACKBONE_DIR / "model.safetensors"),
        "slots": slots,
    }


def backbone_digest(backbone_dir: Path) -> str:
    """SHA-256 of the backbone weights: ties each adapter to the exact backbone it was trained with."""
    return file_digest(Path(backbone_dir) / "model.safetensors")


def check_base_weights(path: Path) -> None:
    """The backbone file must be readable and hold base weights only (no LoRA wrapper keys)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except SafetensorError as err:
        raise ReleaseError(f"{path}: corrupted safetensors file ({err}).") from err
    wrapped = [key for key in keys if any(marker in key for marker in ADAPTER_KEY_MARKERS)]
    if wrapped:
        raise ReleaseError(f"{path}: holds adapter-wrapper keys such as {wrapped[0]!r}; save the unloaded base model.")
