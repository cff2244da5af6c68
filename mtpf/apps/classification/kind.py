"""The sentence-classification app kind (`mtpf finetune --task classification`, `POST /v1/classify`): its data
(`data.py`), its protocol and training (`train.py`), and here what the rest of mtpf asks of a kind: the trained
app's scores, the export's check (accuracy of both graphs) and one served row's answer (label and probability)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from mtpf.apps.classification.data import check_classes, load_classification_spec
from mtpf.apps.classification.train import CLASSIFICATION, SLOT, ClassificationProtocol, train_classifier
from mtpf.apps.kinds import AppKind, RowOutput, TrainedApp, register_app_kind
from mtpf.data.roots import TC_DATA
from mtpf.models import LoadedModel
from mtpf.training.downstream import DownstreamData, subsample


def train_classification_app(
    loaded: LoadedModel, data: str, data_root: str, protocol: ClassificationProtocol, seed: int
) -> TrainedApp:
    name, splits = load_classification_spec(data, data_root)
    classes = check_classes(splits)
    run, model = train_classifier(loaded, DownstreamData(name, splits, classes), protocol, seed=seed)
    scores = {
        "test_accuracy": run.test_accuracy,
        "test_macro_f1": run.test_macro_f1,
        "dev_accuracy": run.dev_accuracy,
        "best_epoch": run.best_epoch,
    }
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
