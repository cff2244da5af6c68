"""Downstream adaptation shared by every app task: LoRA on every layer + a linear head, two phases, dev selection.

The NER protocol (paper appendix A) and the sentence-classification app both train this way: a fresh head warmed
up alone (encoder frozen), then the head and a downstream LoRA jointly; the weights of the epoch with the best dev
metric are restored before testing. Where the release has a trained slot for the task (`ner`, `tc`), its weights
initialise the downstream LoRA of the slot's layers, reproducing the slot's update exactly.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback, TrainingArguments

from configuration_mtpf import DEFAULT_TARGET_ROLES, make_slot
from mtpf.models import LoadedModel
from mtpf.slots import lora_config_for_slot
from mtpf.training.precision import use_cpu_bf16

logger = logging.getLogger(__name__)
HEAD = "classifier"
Row = TypeVar("Row")


@dataclass
class AdapterProtocol:
    """How a downstream LoRA + head is trained (defaults: the paper's NER protocol, appendix A)."""

    r: int = field(default=32, metadata={"help": "Downstream LoRA rank (paper: 32)."})
    lora_alpha: int = field(default=64, metadata={"help": "Downstream LoRA alpha (paper: 64)."})
    target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_ROLES), metadata={"help": "Roles on every layer."}
    )
    warmup_epochs: float = field(default=10, metadata={"help": "Head-only epochs, encoder frozen (paper: 10)."})
    epochs: float = field(default=30, metadata={"help": "Joint LoRA + head epochs (paper: 30)."})
    batch_size: int = field(default=64, metadata={"help": "Training batch size (paper: 64)."})
    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW learning rate (paper: 2e-5)."})
    warmup_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the head-only phase (default: learning_rate)."}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (paper: 0.01)."})
    max_length: int = field(default=256, metadata={"help": "Sub-tokens per text; NER: cut words count as O."})
    max_train_sentences: int | None = field(
        default=None, metadata={"help": "Cap on train (seeded), applied before the data fraction."}
    )
    max_dev_sentences: int | None = field(default=None, metadata={"help": "Cap on dev (seeded)."})
    max_test_sentences: int | None = field(default=None, metadata={"help": "Cap on test (seeded)."})
    eval_batch_size: int = field(default=128, metadata={"help": "Batch size for dev/test prediction."})
    bf16: bool = field(
        default=False,
        metadata={"help": "bf16 autocast on a CPU with native bf16 (else fp32, with a warning); on by itself on CUDA."},
    )
    min_steps_per_epoch: int = field(
        default=0,
        metadata={
            "help": "Repeat a small training set within each epoch until an epoch has at least this many optimizer "
            "steps (0: off, the paper). Keeps low-resource runs from stopping after a handful of updates."
        },
    )


def subsample(rows: list[Row], fraction: float = 1.0, cap: int | None = None, seed: int = 0) -> list[Row]:
    """A fixed seeded subset: the same rows for every model and training seed."""
    if not 0 < fraction <= 1:
        raise ValueError(f"The data fraction must be in (0, 1], got {fraction}.")
    count = max(1, math.ceil(len(rows) * fraction))
    if cap is not None:
        count = min(count, cap)
    if count >= len(rows):
        return list(rows)
    keep = np.sort(np.random.default_rng(seed).permutation(len(rows))[:count])
    return [rows[i] for i in keep]


def repeat_to_min_steps(rows: list[Row], batch_size: int, min_steps: int) -> list[Row]:
    """Whole copies of a small training set, enough for `min_steps` batches per epoch (unchanged when it has them)."""
    if min_steps <= 0 or not rows:
        return rows
    copies = math.ceil(min_steps * batch_size / len(rows))
    return rows * max(1, copies)


def capped_splits(splits: dict[str, list[Row]], protocol: AdapterProtocol, fraction: float = 1.0):
    """Train, dev and test under the protocol's caps (seeded); the cap first, then the fraction of what is left,
    so a 10 % run trains on a tenth of the full run's rows."""
    train = subsample(subsample(splits["train"], 1.0, protocol.max_train_sentences), fraction)
    dev = subsample(splits["dev"], 1.0, protocol.max_dev_sentences)
    test = subsample(splits["test"], 1.0, protocol.max_test_sentences)
    return train, dev, test


@dataclass
class DownstreamData:
    """A downstream dataset: its recorded name, its train/dev/test rows and its label set (sorted; tags or classes)."""

    name: str
    splits: dict[str, list]
    labels: list[str]


@dataclass(frozen=True)
class DownstreamHead:
    """What a downstream run puts on the backbone: the head class and its labels (tags, classes, or one output for
    a regression), the downstream LoRA's adapter name, and the release slot that initialises it."""

    model_class: type
    labels: list[str]
    adapter: str
    slot: str


def build_adapter_model(candidate: LoadedModel, head: DownstreamHead, protocol: AdapterProtocol) -> PeftModel:
    """The candidate's backbone + a fresh head + a downstream LoRA on every layer, initialised from the candidate's
    trained slot where it has one."""
    labels, adapter, slot = head.labels, head.adapter, head.slot
    config = copy.deepcopy(candidate.backbone.config)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.task_slots = {
        adapter: make_slot(config.num_layers, 0, protocol.r, protocol.lora_alpha, 0.0, protocol.target_modules)
    }
    model = head.model_class(config)
    model.backbone.load_state_dict(candidate.backbone.backbone.state_dict(), strict=True)
    lora = lora_config_for_slot(config, adapter, modules_to_save=[HEAD])  # the head ships with the adapter
    peft_model = get_peft_model(model, lora, adapter_name=adapter)
    if slot in candidate.adapters:
        init_from_slot(peft_model, candidate.adapters[slot], adapter)
    return peft_model


def init_from_slot(peft_model: PeftModel, adapter_dir: Path, adapter: str) -> int:
    """Copy a trained slot into the downstream LoRA `adapter` so that both give the same weight update.

    With slot scale s1 = alpha1/r1 and downstream scale s2: A2[:r1] = A1, B2[:, :r1] = B1 * s1/s2 and
    B2[:, r1:] = 0, so s2 B2 A2 = s1 B1 A1; the extra ranks keep their fresh init. Returns modules initialised.
    """
    adapter_dir = Path(adapter_dir)
    slot = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    slot_scale = float(slot["lora_alpha"]) / float(slot["r"])
    copied = 0
    with torch.no_grad():
        for key, lora_a in tensors.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module_name = key.removesuffix(".lora_A.weight")
            module = peft_model.get_submodule(module_name)
            target_a, target_b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            rank = lora_a.shape[0]
            if rank > target_a.shape[0]:
                raise ValueError(
                    f"{adapter_dir}: the slot has rank {rank}, above the downstream rank {target_a.shape[0]}; "
                    "raise the protocol's r to at least the slot's."
                )
            scale = slot_scale / module.scaling[adapter]
            target_a[:rank].copy_(lora_a)
            target_b.zero_()
            target_b[:, :rank].copy_(tensors[f"{module_name}.lora_B.weight"] * scale)
            copied += 1
    if copied == 0:
        raise ValueError(f"{adapter_dir}: no LoRA tensors matched this model; was it made for another backbone?")
    logger.info("Downstream LoRA %r initialised from the slot in %s (%d modules)", adapter, adapter_dir, copied)
    return copied


def set_phase(peft_model: PeftModel, joint: bool) -> None:
    """Head-only warm-up (encoder frozen) or joint training of the downstream LoRA and the head."""
    for name, param in peft_model.named_parameters():
        param.requires_grad = HEAD in name or (joint and "lora_" in name)


class KeepBestOnDev(TrainerCallback):
    """Remember the trainable weights at the best dev metric, to restore them before testing."""

    def __init__(self, model: torch.nn.Module, metric: str = "eval_f1") -> None:
        self.model, self.metric = model, metric
        self.best_score = -math.inf  # any first score is better (a correlation may be negative)
        self.best_epoch = 0.0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.curve: list[float] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        score = (metrics or {}).get(self.metric, -1.0)
        logger.info("epoch %.1f: dev %s %.2f", state.epoch or 0.0, self.metric.removeprefix("eval_"), score)
        self.curve.append(round(float(score), 4))
        if score > self.best_score:
            self.best_score, self.best_epoch = score, float(state.epoch or 0.0)
            self.best_state = {name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    def restore(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state, strict=False)


class SequentialEvalTrainer(Trainer):
    """Length-grouped training batches; dev/test predicted in dataset order (rows align with their gold)."""

    def _get_eval_sampler(self, eval_dataset) -> SequentialSampler:
        return SequentialSampler(eval_dataset)


@dataclass
class DownstreamRun:
    """One downstream training's inputs: the encoded splits and their collator, how dev picks the epoch (its metrics
    function, the metric's name, and how logits become predictions: class or tag ids by default, a regression
    head's value for a kind that scores), the seed and a scratch folder for the trainer."""

    train_set: Dataset
    dev_set: Dataset
    collator: Callable
    dev_metrics: Callable
    metric: str
    seed: int
    scratch: str
    predictions: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class Phase:
    """One of the two phases: the head alone (warm-up) or LoRA + head (joint), for so many epochs at a rate."""

    joint: bool
    epochs: float
    learning_rate: float


def train_two_phases(model: PeftModel, protocol: AdapterProtocol, run: DownstreamRun) -> tuple[Trainer, KeepBestOnDev]:
    """Warm the head up alone, then train LoRA + head; restore the epoch with the best dev metric."""
    reduce = run.predictions or argmax_predictions
    keep_best = KeepBestOnDev(model, run.metric)
    phases = [
        Phase(
            joint=False,
            epochs=protocol.warmup_epochs,
            learning_rate=protocol.warmup_learning_rate or protocol.learning_rate,
        ),
        Phase(joint=True, epochs=protocol.epochs, learning_rate=protocol.learning_rate),
    ]
    trainer = None
    for phase in phases:
        if phase.epochs <= 0:
            continue
        set_phase(model, phase.joint)
        # The warm-up picks no model: dev selection covers the joint epochs (or the warm-up if there are none).
        selects = phase.joint or protocol.epochs <= 0
        trainer = SequentialEvalTrainer(
            model=model,
            args=training_arguments(run.scratch, protocol, phase, seed=run.seed, evaluate=selects),
            train_dataset=run.train_set,
            eval_dataset=run.dev_set,
            data_collator=run.collator,
            compute_metrics=run.dev_metrics,
            preprocess_logits_for_metrics=lambda logits, labels: reduce(logits),
            callbacks=[keep_best] if selects else [],
        )
        trainer.train()
    if trainer is None:
        raise ValueError("The protocol trains for 0 epochs in both phases; give warmup_epochs or epochs.")
    keep_best.restore()
    trainer.compute_metrics = None  # dev metrics only; the caller scores test against its full gold
    return trainer, keep_best


def argmax_predictions(logits: torch.Tensor) -> torch.Tensor:
    """The class (or, per token, tag) ids of a classification head's logits."""
    return logits.argmax(-1)


def training_arguments(
    output_dir: str, protocol: AdapterProtocol, phase: Phase, *, seed: int, evaluate: bool
) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=phase.epochs,
        per_device_train_batch_size=protocol.batch_size,
        per_device_eval_batch_size=protocol.eval_batch_size,
        learning_rate=phase.learning_rate,
        weight_decay=protocol.weight_decay,
        eval_strategy="epoch" if evaluate else "no",
        save_strategy="no",
        logging_strategy="epoch",
        report_to=[],
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        **precision(protocol),
    )


def precision(protocol: AdapterProtocol) -> dict[str, bool]:
    """bf16 on a CUDA GPU that has it (as before); on a CPU only when asked and native (`use_cpu_bf16`)."""
    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported()}
    cpu_bf16 = protocol.bf16 and use_cpu_bf16()
    return {"bf16": cpu_bf16, "use_cpu": cpu_bf16}
