"""How a sentence classifier is trained on a release: a linear head on the model's own sentence embedding (the pooling
and normalisation of `MtpfModel.encode`, i.e. `MtpfForSequenceClassification`), with a downstream LoRA on every layer
initialised from the release's `tc` slot. It trains like the NER protocol (`mtpf.training.downstream`: head warm-up,
then LoRA + head, the epoch with the best dev accuracy restored) and reports test accuracy and macro-F1."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from peft import PeftModel
from sklearn.metrics import accuracy_score, f1_score
from transformers import DataCollatorWithPadding, EvalPrediction

from modeling_mtpf import MtpfForSequenceClassification
from mtpf.apps.classification.data import LabeledText
from mtpf.models import LoadedModel
from mtpf.training.downstream import (
    AdapterProtocol,
    DownstreamData,
    DownstreamHead,
    DownstreamRun,
    build_adapter_model,
    capped_splits,
    repeat_to_min_steps,
    train_two_phases,
)

CLASSIFICATION = "classification"  # adapter name of the downstream LoRA
SLOT = "tc"  # the release slot that initialises it


@dataclass
class ClassificationProtocol(AdapterProtocol):
    """How a sentence classifier is trained on top of a release (our defaults; the paper has no such protocol)."""

    warmup_epochs: float = field(default=2, metadata={"help": "Head-only epochs, encoder frozen."})
    epochs: float = field(default=4, metadata={"help": "Joint LoRA + head epochs."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size."})
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate of the joint phase."})
    warmup_learning_rate: float | None = field(
        default=5e-3, metadata={"help": "Head-only learning rate (the head reads a unit-length embedding)."}
    )
    max_length: int = field(default=128, metadata={"help": "Sub-tokens per text."})


@dataclass
class ClassificationRun:
    dataset: str
    seed: int
    test_accuracy: float  # percent
    test_macro_f1: float
    dev_accuracy: float
    best_epoch: float
    train_texts: int
    test_texts: int
    seconds: float
    dev_curve: list[float] = field(default_factory=list)


def _encode(rows: list[LabeledText], candidate: LoadedModel, label_ids: dict[str, int], max_length: int) -> Dataset:
    encoded = candidate.tokenizer([row.text for row in rows], truncation=True, max_length=max_length)
    return Dataset.from_dict({**encoded, "labels": [label_ids[row.label] for row in rows]})


def train_classifier(
    candidate: LoadedModel, data: DownstreamData, protocol: ClassificationProtocol, *, seed: int = 0
) -> tuple[ClassificationRun, PeftModel]:
    """Train the app's classifier; its test accuracy / macro-F1 at the epoch with the best dev accuracy."""
    start = time.monotonic()
    classes = data.labels
    train, dev, test = capped_splits(data.splits, protocol)
    label_ids = {label: i for i, label in enumerate(classes)}
    epoch_rows = repeat_to_min_steps(train, protocol.batch_size, protocol.min_steps_per_epoch)
    train_set = _encode(epoch_rows, candidate, label_ids, protocol.max_length)
    dev_set, test_set = (_encode(rows, candidate, label_ids, protocol.max_length) for rows in (dev, test))
    torch.manual_seed(seed)
    # the backbone + a sentence head + a downstream LoRA on every layer, the `tc` slot as its init
    model = build_adapter_model(
        candidate, DownstreamHead(MtpfForSequenceClassification, classes, CLASSIFICATION, SLOT), protocol
    )

    def dev_metrics(prediction: EvalPrediction) -> dict[str, float]:
        return {"accuracy": 100.0 * accuracy_score(prediction.label_ids, prediction.predictions)}

    with tempfile.TemporaryDirectory(prefix="mtpf-classification-") as scratch:
        collator = DataCollatorWithPadding(candidate.tokenizer)
        run = DownstreamRun(
            train_set, dev_set, collator, dev_metrics, metric="eval_accuracy", seed=seed, scratch=scratch
        )
        trainer, keep_best = train_two_phases(model, protocol, run)
        predicted = trainer.predict(test_set).predictions  # class ids (the trainer argmaxes its logits)
    gold = [label_ids[row.label] for row in test]
    run = ClassificationRun(
        dataset=data.name,
        seed=seed,
        test_accuracy=round(100.0 * accuracy_score(gold, predicted), 4),
        test_macro_f1=round(100.0 * f1_score(gold, predicted, average="macro", zero_division=0), 4),
        dev_accuracy=round(float(keep_best.best_score), 4),
        best_epoch=keep_best.best_epoch,
        train_texts=len(train),
        test_texts=len(test),
        seconds=round(time.monotonic() - start, 1),
        dev_curve=keep_best.curve,
    )
    return run, model
