"""A sentence-classification app: its data, its protocol and its training (`mtpf finetune --task classification`).

The classifier is a linear head on the model's own sentence embedding (the pooling and normalisation of
`MtpfModel.encode`, i.e. `MtpfForSequenceClassification`), with a downstream LoRA on every layer initialised from
the release's `tc` slot. It trains like the NER protocol (`mtpf.training.downstream`: head warm-up, then LoRA +
head, the epoch with the best dev accuracy restored) and reports test accuracy and macro-F1.

Data: a local task folder name (`emotion`, under `--tc_data_root`), a folder of `train` / `dev` (or `validation`)
/ `test` files in JSON lines or CSV with `text` and `label` fields, or `hf://ID[:CONFIG]` (a `datasets` dataset
with `text` and `label` columns). Without a dev split, a seeded 10 % of train becomes dev.
"""

from __future__ import annotations

import csv
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from peft import PeftModel
from sklearn.metrics import accuracy_score, f1_score
from transformers import DataCollatorWithPadding, EvalPrediction

from modeling_mtpf import MtpfForSequenceClassification
from mtpf.apps.kinds import AppKind, RowOutput, TrainedApp, register_app_kind
from mtpf.data.roots import TC_DATA
from mtpf.data.splits import HUB_PREFIX, hub_dataset_name, hub_splits, with_dev
from mtpf.errors import MtpfError
from mtpf.io import read_json_lines, utf8_errors_named
from mtpf.models import LoadedModel
from mtpf.training.downstream import (
    AdapterProtocol,
    build_adapter_model,
    capped_splits,
    repeat_to_min_steps,
    subsample,
    train_two_phases,
)

CLASSIFICATION = "classification"  # adapter name of the downstream LoRA
SLOT = "tc"  # the release slot that initialises it
FILE_SPLITS = {"train": ("train",), "dev": ("dev", "validation"), "test": ("test",)}  # file stems in a folder


class ClassificationDataError(MtpfError, ValueError):
    """Classification data that cannot be used; the message names the file and line, or the dataset."""


@dataclass
class LabeledText:
    text: str
    label: str
    where: str  # "file:line" or "dataset [split] row N", for error messages


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


# ----- data ---------------------------------------------------------------------------------------------


def load_classification_spec(spec: str, data_root: str | Path) -> tuple[str, dict[str, list[LabeledText]]]:
    """(recorded name, splits train/dev/test) of a local task name, a folder, or `hf://ID[:CONFIG]`."""
    if spec.startswith(HUB_PREFIX):
        return hub_dataset_name(spec), with_dev(_hub_splits(spec), spec, ClassificationDataError)
    folder = Path(spec) if Path(spec).is_dir() else Path(data_root) / spec
    if not folder.is_dir():
        raise ClassificationDataError(f"--data {spec!r}: neither a folder nor a task under {data_root}.")
    return folder.name, with_dev(_folder_splits(folder), spec, ClassificationDataError)


def _folder_splits(folder: Path) -> dict[str, list[LabeledText]]:
    splits = {}
    for split, names in FILE_SPLITS.items():
        files = sorted(p for name in names for p in folder.glob(f"{name}.*") if p.suffix in (".jsonl", ".csv"))
        if len(files) > 1:
            raise ClassificationDataError(f"{folder}: several {split} files {[f.name for f in files]}; keep one.")
        if files:
            splits[split] = _read_csv(files[0]) if files[0].suffix == ".csv" else _read_jsonl(files[0])
    return splits


def _read_jsonl(path: Path) -> list[LabeledText]:
    rows = []
    for number, row in read_json_lines(path, ClassificationDataError):
        rows.append(_labeled(row, f"{path}:{number}"))
    return rows


def _read_csv(path: Path) -> list[LabeledText]:
    with utf8_errors_named(path, ClassificationDataError), path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"text", "label"} <= set(reader.fieldnames or []):
            raise ClassificationDataError(
                f"{path}:1: the header needs 'text' and 'label' columns, has {reader.fieldnames}."
            )
        return [_labeled(row, f"{path}:{reader.line_num}") for row in reader]


def _labeled(row: object, where: str) -> LabeledText:
    if not isinstance(row, dict) or not isinstance(row.get("text"), str) or row.get("label") in (None, ""):
        raise ClassificationDataError(f'{where}: expected a string "text" and a non-empty "label".')
    if not row["text"].strip():
        raise ClassificationDataError(f"{where}: the text is empty.")
    return LabeledText(row["text"], str(row["label"]), where)


def _hub_splits(spec: str) -> dict[str, list[LabeledText]]:
    from datasets import ClassLabel

    splits = {}
    for split, (name, data) in hub_splits(spec, ClassificationDataError).items():
        if not {"text", "label"} <= set(data.column_names):
            raise ClassificationDataError(
                f"{spec} [{name}]: needs 'text' and 'label' columns, has {data.column_names}."
            )
        feature = data.features["label"]
        names_of = feature.names if isinstance(feature, ClassLabel) else None
        splits[split] = [
            _labeled({"text": text, "label": names_of[label] if names_of else label}, f"{spec} [{name}] row {row}")
            for row, (text, label) in enumerate(zip(data["text"], data["label"], strict=True))
        ]
    return splits


def check_classes(splits: dict[str, list[LabeledText]]) -> list[str]:
    """The training classes (sorted); a dev/test label never seen in train is an error naming file and line."""
    classes = sorted({row.label for row in splits["train"]})
    if len(classes) < 2:
        raise ClassificationDataError(f"{splits['train'][0].where}: train has {len(classes)} class; need at least 2.")
    for split in ("dev", "test"):
        for row in splits[split]:
            if row.label not in classes:
                raise ClassificationDataError(f"{row.where}: {split} label {row.label!r} never occurs in train.")
    return classes


# ----- training ---------------------------------------------------------------------------------------------


def _encode(rows: list[LabeledText], candidate: LoadedModel, label_ids: dict[str, int], max_length: int) -> Dataset:
    encoded = candidate.tokenizer([row.text for row in rows], truncation=True, max_length=max_length)
    return Dataset.from_dict({**encoded, "labels": [label_ids[row.label] for row in rows]})


def train_classifier(
    candidate: LoadedModel,
    dataset: str,
    splits: dict[str, list[LabeledText]],
    classes: list[str],
    protocol: ClassificationProtocol,
    seed: int = 0,
) -> tuple[ClassificationRun, PeftModel]:
    """Train the app's classifier; its test accuracy / macro-F1 at the epoch with the best dev accuracy."""
    start = time.monotonic()
    train, dev, test = capped_splits(splits, protocol)
    label_ids = {label: i for i, label in enumerate(classes)}
    epoch_rows = repeat_to_min_steps(train, protocol.batch_size, protocol.min_steps_per_epoch)
    train_set = _encode(epoch_rows, candidate, label_ids, protocol.max_length)
    dev_set, test_set = (_encode(rows, candidate, label_ids, protocol.max_length) for rows in (dev, test))
    torch.manual_seed(seed)
    # the backbone + a sentence head + a downstream LoRA on every layer, the `tc` slot as its init
    model = build_adapter_model(candidate, MtpfForSequenceClassification, classes, protocol, CLASSIFICATION, SLOT)

    def dev_metrics(prediction: EvalPrediction) -> dict[str, float]:
        return {"accuracy": 100.0 * accuracy_score(prediction.label_ids, prediction.predictions)}

    with tempfile.TemporaryDirectory(prefix="mtpf-classification-") as scratch:
        collator = DataCollatorWithPadding(candidate.tokenizer)
        trainer, keep_best = train_two_phases(
            model,
            protocol,
            train_set,
            dev_set,
            collator=collator,
            dev_metrics=dev_metrics,
            seed=seed,
            scratch=scratch,
            metric="eval_accuracy",
        )
        predicted = trainer.predict(test_set).predictions  # class ids (the trainer argmaxes its logits)
    gold = [label_ids[row.label] for row in test]
    run = ClassificationRun(
        dataset=dataset,
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


def train_classification_app(
    loaded: LoadedModel, data: str, data_root: str, protocol: ClassificationProtocol, seed: int
) -> TrainedApp:
    name, splits = load_classification_spec(data, data_root)
    classes = check_classes(splits)
    run, model = train_classifier(loaded, name, splits, classes, protocol, seed=seed)
    scores = {"test_accuracy": run.test_accuracy, "test_macro_f1": run.test_macro_f1,
              "dev_accuracy": run.dev_accuracy, "best_epoch": run.best_epoch}  # fmt: skip
    return TrainedApp(CLASSIFICATION, model, name, classes, scores, asdict(run))


def classification_test_texts(app: dict, sentences: int) -> tuple[list[str], list]:
    """The first `sentences` (seeded) test rows, as texts and as class ids (gold)."""
    rows = subsample(load_classification_spec(app["data"], app.get("data_root") or TC_DATA)[1]["test"], 1.0, sentences)
    return [row.text for row in rows], [int(app["label2id"][row.label]) for row in rows]


def best_label(probabilities: torch.Tensor, id2label: dict[int, str]) -> dict:
    """A classification answer: the most likely label and its probability."""
    best = int(probabilities.argmax())
    return {"label": id2label[best], "score": float(probabilities[best])}


def compare_classifier_outputs(gold: list, references: list, outputs: list, encodings: list, id2label: dict) -> dict:
    """Accuracy of the PyTorch and the ONNX class logits against the gold classes, and how often they agree."""
    reference = np.concatenate(references).argmax(-1)
    onnx = np.concatenate(outputs).argmax(-1)
    truth = np.asarray(gold)
    report = {
        "accuracy_pytorch": round(100 * float((reference == truth).mean()), 4),
        "accuracy_onnx": round(100 * float((onnx == truth).mean()), 4),
        "prediction_agreement": round(100 * float((reference == onnx).mean()), 4),
    }
    report["accuracy_drop"] = round(report["accuracy_pytorch"] - report["accuracy_onnx"], 4)
    return report


def classifier_answer(output: RowOutput) -> dict:
    """The label of one text and its probability (what /v1/classify answers per input)."""
    return best_label(torch.softmax(torch.as_tensor(output.logits), dim=-1), output.id2label)


CLASSIFICATION_KIND = register_app_kind(
    AppKind(
        name=CLASSIFICATION,
        protocol=ClassificationProtocol,
        data_root=TC_DATA,
        train=train_classification_app,
        test_texts=classification_test_texts,
        head_class="MtpfForSequenceClassification",
        slot=SLOT,
        onnx_output="sentence_logits",
        endpoint="classify",
        answer=classifier_answer,
        compare_outputs=compare_classifier_outputs,
        pipeline_tag="text-classification",
        label_kind="Classes",
        score_rows=(
            ("test", "accuracy", "test_accuracy"),
            ("test", "macro-F1", "test_macro_f1"),
            ("dev", "accuracy", "dev_accuracy"),
        ),
    )
)
