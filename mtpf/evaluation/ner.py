"""Downstream NER adaptation (paper appendix A): LoRA on every layer, a linear head warmed up alone, then joint.

Where the model has a trained `ner` slot, its weights initialise the downstream LoRA of the slot's layers
(the slot's update is reproduced exactly; extra ranks start like fresh LoRA). Labels sit on first sub-tokens;
the score is seqeval's strict IOB2 entity F1 on test, at the epoch with the best dev F1. Words cut off by
`max_length` count as predicted `O`, so truncation can only lower the score, never hide gold entities.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from seqeval.metrics import f1_score
from seqeval.scheme import IOB2
from torch.utils.data import SequentialSampler
from transformers import (
    DataCollatorForTokenClassification,
    EvalPrediction,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from configuration_mtpf import DEFAULT_TARGET_ROLES, make_slot
from modeling_mtpf import MtpfForTokenClassification
from mtpf.data.conll import TaggedSentence
from mtpf.data.tokens import IGNORE_INDEX, first_subtoken_labels
from mtpf.models import LoadedModel
from mtpf.slots import lora_config_for_slot

logger = logging.getLogger(__name__)
DOWNSTREAM = "ner"  # adapter name of the downstream LoRA (it continues the `ner` slot where one exists)
HEAD = "classifier"


@dataclass
class NerProtocol:
    """How one model is adapted to one NER dataset (defaults: the paper's appendix A)."""

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
    max_length: int = field(default=256, metadata={"help": "Sub-tokens per sentence; cut words count as O."})
    max_train_sentences: int | None = field(
        default=None, metadata={"help": "Cap on train (seeded), applied before the data fraction."}
    )
    max_dev_sentences: int | None = field(default=None, metadata={"help": "Cap on dev (seeded)."})
    max_test_sentences: int | None = field(default=None, metadata={"help": "Cap on test (seeded)."})
    eval_batch_size: int = field(default=128, metadata={"help": "Batch size for dev/test prediction."})
    min_steps_per_epoch: int = field(
        default=0,
        metadata={
            "help": "Repeat a small training set within each epoch until an epoch has at least this many optimizer "
            "steps (0: off, the paper). Keeps low-resource runs from stopping after a handful of updates."
        },
    )


@dataclass
class NerRun:
    dataset: str
    fraction: float
    seed: int
    test_f1: float  # percent
    dev_f1: float
    best_epoch: float
    train_sentences: int  # distinct sentences
    rows_per_epoch: int  # after repeating a small set up to min_steps_per_epoch batches
    test_sentences: int
    seconds: float
    dev_curve: list[float] = field(default_factory=list)  # dev F1 after each selecting epoch


def subsample(sentences: list[TaggedSentence], fraction: float = 1.0, cap: int | None = None, seed: int = 0):
    """A fixed seeded subset: the same sentences for every model and training seed."""
    if not 0 < fraction <= 1:
        raise ValueError(f"The data fraction must be in (0, 1], got {fraction}.")
    count = max(1, math.ceil(len(sentences) * fraction))
    if cap is not None:
        count = min(count, cap)
    if count >= len(sentences):
        return list(sentences)
    keep = np.sort(np.random.default_rng(seed).permutation(len(sentences))[:count])
    return [sentences[i] for i in keep]


def repeat_to_min_steps(sentences: list[TaggedSentence], batch_size: int, min_steps: int) -> list[TaggedSentence]:
    """Whole copies of a small training set, enough for `min_steps` batches per epoch (unchanged when it has them)."""
    if min_steps <= 0 or not sentences:
        return sentences
    copies = math.ceil(min_steps * batch_size / len(sentences))
    return sentences * max(1, copies)


def encode_sentences(
    sentences: list[TaggedSentence], tokenizer: PreTrainedTokenizerBase, label_ids: dict[str, int], max_length: int
) -> Dataset:
    """Sub-token inputs with each word's label on its first sub-token and IGNORE_INDEX elsewhere."""
    if not tokenizer.is_fast:
        raise ValueError("NER evaluation needs a fast tokenizer (word_ids) for first-sub-token labels.")
    encoded = tokenizer([s.tokens for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length)
    labels = [
        first_subtoken_labels(encoded.word_ids(row), [label_ids[tag] for tag in sentence.tags])
        for row, sentence in enumerate(sentences)
    ]
    columns = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
    if "token_type_ids" in encoded:
        columns["token_type_ids"] = encoded["token_type_ids"]
    return Dataset.from_dict(columns)


def sort_by_length(sentences: list[TaggedSentence], encoded: Dataset) -> tuple[list[TaggedSentence], Dataset]:
    """Prediction rows shortest first (gold reordered alike), so each batch pads to nearly its own length.

    Entity F1 does not depend on sentence order; in dataset order most batches pad to their longest sentence.
    """
    lengths = [len(ids) for ids in encoded["input_ids"]]
    order = sorted(range(len(sentences)), key=lengths.__getitem__)
    return [sentences[row] for row in order], encoded.select(order)


def decode_tags(predictions: np.ndarray, label_rows: np.ndarray, id2label: dict[int, str], gold) -> list[list[str]]:
    """Predicted tags per word: first-sub-token predictions, then `O` for words truncation cut off."""
    out = []
    for pred_row, label_row, sentence in zip(predictions, label_rows, gold, strict=True):
        tags = [id2label[int(p)] for p, gold_id in zip(pred_row, label_row) if gold_id != IGNORE_INDEX]
        out.append(tags + ["O"] * (len(sentence.tags) - len(tags)))
    return out


def entity_f1(gold: list[list[str]], predicted: list[list[str]]) -> float:
    """seqeval strict IOB2 entity F1, in percent."""
    return 100.0 * f1_score(gold, predicted, mode="strict", scheme=IOB2, zero_division=0)


def build_ner_model(candidate: LoadedModel, labels: list[str], protocol: NerProtocol) -> PeftModel:
    """The candidate's backbone + a fresh token head + downstream LoRA on every layer (ner slot as init)."""
    config = copy.deepcopy(candidate.backbone.config)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.task_slots = {
        DOWNSTREAM: make_slot(config.num_layers, 0, protocol.r, protocol.lora_alpha, 0.0, protocol.target_modules)
    }
    model = MtpfForTokenClassification(config)
    model.backbone.load_state_dict(candidate.backbone.backbone.state_dict(), strict=True)
    lora = lora_config_for_slot(config, DOWNSTREAM, modules_to_save=[HEAD])  # the head ships with the adapter
    peft_model = get_peft_model(model, lora, adapter_name=DOWNSTREAM)
    if DOWNSTREAM in candidate.adapters:
        init_from_slot(peft_model, candidate.adapters[DOWNSTREAM])
    return peft_model


def init_from_slot(peft_model: PeftModel, adapter_dir: Path) -> int:
    """Copy a trained slot into the downstream LoRA so that both give the same weight update.

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
            target_a, target_b = module.lora_A[DOWNSTREAM].weight, module.lora_B[DOWNSTREAM].weight
            rank = lora_a.shape[0]
            if rank > target_a.shape[0]:
                raise ValueError(
                    f"{adapter_dir}: the ner slot has rank {rank}, above the downstream rank {target_a.shape[0]}; "
                    "raise the NER protocol's r to at least the slot's."
                )
            scale = slot_scale / module.scaling[DOWNSTREAM]
            target_a[:rank].copy_(lora_a)
            target_b.zero_()
            target_b[:, :rank].copy_(tensors[f"{module_name}.lora_B.weight"] * scale)
            copied += 1
    if copied == 0:
        raise ValueError(f"{adapter_dir}: no LoRA tensors matched this model; was it made for another backbone?")
    logger.info("Downstream LoRA initialised from the ner slot in %s (%d modules)", adapter_dir, copied)
    return copied


def set_phase(peft_model: PeftModel, joint: bool) -> None:
    """Head-only warm-up (encoder frozen) or joint training of the downstream LoRA and the head."""
    for name, param in peft_model.named_parameters():
        param.requires_grad = HEAD in name or (joint and "lora_" in name)


class KeepBestOnDev(TrainerCallback):
    """Remember the trainable weights at the best dev F1, to restore them before testing."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.best_f1 = -1.0
        self.best_epoch = 0.0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.curve: list[float] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        f1 = (metrics or {}).get("eval_f1", -1.0)
        logger.info("epoch %.1f: dev F1 %.2f", state.epoch or 0.0, f1)
        self.curve.append(round(float(f1), 4))
        if f1 > self.best_f1:
            self.best_f1, self.best_epoch = f1, float(state.epoch or 0.0)
            self.best_state = {name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    def restore(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state, strict=False)


class NerTrainer(Trainer):
    """Length-grouped training batches; dev/test predicted in dataset order (rows align with their gold sentences)."""

    def _get_eval_sampler(self, eval_dataset) -> SequentialSampler:
        return SequentialSampler(eval_dataset)


def train_ner(
    candidate: LoadedModel,
    dataset: str,
    splits: dict[str, list[TaggedSentence]],
    labels: list[str],
    protocol: NerProtocol,
    fraction: float = 1.0,
    seed: int = 0,
) -> tuple[NerRun, PeftModel]:
    """The NER protocol (evaluation and apps alike): the run's scores and the tagger at its best dev epoch."""
    start = time.monotonic()
    # The cap first, then the fraction of what is left: a 10 % run trains on a tenth of the full run's sentences.
    train = subsample(subsample(splits["train"], 1.0, protocol.max_train_sentences), fraction)
    dev = subsample(splits["dev"], 1.0, protocol.max_dev_sentences)
    test = subsample(splits["test"], 1.0, protocol.max_test_sentences)
    label_ids = {label: i for i, label in enumerate(labels)}
    id2label = dict(enumerate(labels))
    encode = lambda rows: encode_sentences(rows, candidate.tokenizer, label_ids, protocol.max_length)  # noqa: E731
    epoch_rows = repeat_to_min_steps(train, protocol.batch_size, protocol.min_steps_per_epoch)
    train_set = encode(epoch_rows)
    dev, dev_set = sort_by_length(dev, encode(dev))
    test, test_set = sort_by_length(test, encode(test))
    torch.manual_seed(seed)
    model = build_ner_model(candidate, labels, protocol)

    def dev_metrics(prediction: EvalPrediction) -> dict[str, float]:
        predicted = decode_tags(prediction.predictions, prediction.label_ids, id2label, dev)
        return {"f1": entity_f1([s.tags for s in dev], predicted)}

    keep_best = KeepBestOnDev(model)
    with tempfile.TemporaryDirectory(prefix="mtpf-ner-") as scratch:
        phases = [(False, protocol.warmup_epochs, protocol.warmup_learning_rate or protocol.learning_rate)]
        phases.append((True, protocol.epochs, protocol.learning_rate))
        trainer = None
        for joint, epochs, learning_rate in phases:
            if epochs <= 0:
                continue
            set_phase(model, joint)
            # The warm-up picks no model: dev selection covers the joint epochs (or the warm-up if there are none).
            selects = joint or protocol.epochs <= 0
            trainer = NerTrainer(
                model=model,
                args=_training_arguments(scratch, protocol, epochs, learning_rate, seed, evaluate=selects),
                train_dataset=train_set,
                eval_dataset=dev_set,
                data_collator=DataCollatorForTokenClassification(candidate.tokenizer),
                compute_metrics=dev_metrics,
                preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
                callbacks=[keep_best] if selects else [],
            )
            trainer.train()
        if trainer is None:
            raise ValueError("The NER protocol trains for 0 epochs in both phases; give warmup_epochs or epochs.")
        keep_best.restore()
        trainer.compute_metrics = None  # dev metrics only; test is scored below against full gold sentences
        prediction = trainer.predict(test_set)
    test_f1 = entity_f1(
        [s.tags for s in test], decode_tags(prediction.predictions, prediction.label_ids, id2label, test)
    )
    run = NerRun(
        dataset=dataset,
        fraction=fraction,
        seed=seed,
        test_f1=round(float(test_f1), 4),
        dev_f1=round(float(keep_best.best_f1), 4),
        best_epoch=keep_best.best_epoch,
        train_sentences=len(train),
        rows_per_epoch=len(epoch_rows),
        test_sentences=len(test),
        seconds=round(time.monotonic() - start, 1),
        dev_curve=keep_best.curve,
    )
    logger.info("%s", run)
    return run, model


def _training_arguments(
    output_dir: str, protocol: NerProtocol, epochs: float, learning_rate: float, seed: int, evaluate: bool
) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=protocol.batch_size,
        per_device_eval_batch_size=protocol.eval_batch_size,
        learning_rate=learning_rate,
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
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )
