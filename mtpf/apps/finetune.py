"""An app's own adapter, fine-tuned from a release: `python -m mtpf finetune RELEASE --task ner|classification ...`.

NER runs the very protocol `mtpf-eval` scores (`mtpf.evaluation.ner.train_ner`: LoRA r=32/alpha=64 on every layer,
initialised from the release's `ner` slot, head warm-up, dev selection, seqeval on test), so an app's test F1 is
the number the evaluation suite reports for the same settings. A classification app trains the same way on the
model's sentence embedding, its LoRA initialised from the `tc` slot (`mtpf.apps.classification`). The app folder
is a standard PEFT adapter repo:

    APP/adapter_config.json, adapter_model.safetensors   LoRA + the head (`modules_to_save`)
    APP/mtpf_app.json                                    task, labels (id2label), dataset, scores, backbone
    APP/mtpf_base.json                                   SHA-256 of the backbone weights it was trained on
    APP/README.md                                        model card with the test scores
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from peft import PeftModel

from mtpf.apps.classification import (
    CLASSIFICATION,
    ClassificationProtocol,
    check_classes,
    load_classification_spec,
    train_classifier,
)
from mtpf.data.roots import NER_DATA, TC_DATA
from mtpf.errors import MtpfError
from mtpf.evaluation.ner import DOWNSTREAM, NerProtocol, train_ner
from mtpf.evaluation.ner_data import check_label_sets, load_ner_spec
from mtpf.io import atomic_directory, check_output_folder, update_json
from mtpf.models import LoadedModel, is_release, load_model
from mtpf.release import BACKBONE_DIR, BASE_MARKER, backbone_digest
from mtpf.training.downstream import AdapterProtocol

logger = logging.getLogger(__name__)

APP_FILE = "mtpf_app.json"
APP_TASKS = ("ner", "classification")
PROTOCOLS: dict[str, type[AdapterProtocol]] = {"ner": NerProtocol, "classification": ClassificationProtocol}
DATA_ROOTS = {"ner": NER_DATA, "classification": TC_DATA}


class AppError(MtpfError, ValueError):
    """An app that cannot be built or loaded; the message names the file or the argument."""


@dataclass
class TrainedApp:
    """What one task's protocol produced: the model to save (its adapter's name) and what the card reports."""

    adapter: str
    model: PeftModel
    dataset: str
    labels: list[str]
    scores: dict[str, float]
    run: dict


def train_app(
    task: str, loaded: LoadedModel, data: str, data_root: str | os.PathLike, protocol: AdapterProtocol, seed: int
) -> TrainedApp:
    if task == "ner":
        name, splits = load_ner_spec(data, data_root)
        labels = check_label_sets(splits, name)
        run, model = train_ner(loaded, name, splits, labels, protocol, seed=seed)
        scores = {"test_f1": run.test_f1, "dev_f1": run.dev_f1, "best_epoch": run.best_epoch}
        return TrainedApp(DOWNSTREAM, model, name, labels, scores, asdict(run))
    name, splits = load_classification_spec(data, data_root)
    classes = check_classes(splits)
    run, model = train_classifier(loaded, name, splits, classes, protocol, seed=seed)
    scores = {"test_accuracy": run.test_accuracy, "test_macro_f1": run.test_macro_f1,
              "dev_accuracy": run.dev_accuracy, "best_epoch": run.best_epoch}  # fmt: skip
    return TrainedApp(CLASSIFICATION, model, name, classes, scores, asdict(run))


def finetune_app(
    release: str | os.PathLike,
    task: str,
    data: str,
    output: str | os.PathLike,
    protocol: AdapterProtocol | None = None,
    seed: int = 0,
    overwrite: bool = False,
    data_root: str | os.PathLike | None = None,
) -> Path:
    """Fine-tune the app's adapter on `data` from the release and write the app folder atomically."""
    if task not in APP_TASKS:
        raise AppError(f"--task {task!r}: apps are built for {list(APP_TASKS)}.")
    if not is_release(str(release)):
        raise AppError(f"{release}: not a release folder (no {BACKBONE_DIR}/); make one with `mtpf init` or training.")
    protocol = protocol or PROTOCOLS[task]()
    if not isinstance(protocol, PROTOCOLS[task]):
        raise AppError(f"--task {task}: expected a {PROTOCOLS[task].__name__}, got a {type(protocol).__name__}.")
    output = check_output_folder(output, overwrite, APP_FILE, "an app", AppError)
    data_root = Path(data_root or DATA_ROOTS[task])
    trained = train_app(task, load_model(str(release)), data, data_root, protocol, seed)
    backbone_dir = Path(release).resolve() / BACKBONE_DIR
    with atomic_directory(output) as staging:
        save_adapter(trained, staging)
        update_json(staging / "adapter_config.json", lambda c: c.update(base_model_name_or_path=str(backbone_dir)))
        digest = backbone_digest(backbone_dir)
        (staging / BASE_MARKER).write_text(json.dumps({"backbone_sha256": digest}, indent=2) + "\n", encoding="utf-8")
        app = app_description(task, trained, data, protocol, str(backbone_dir))
        app["data_root"] = str(data_root.resolve())  # where a local dataset name was read (export re-reads it)
        (staging / APP_FILE).write_text(json.dumps(app, indent=2) + "\n", encoding="utf-8")
        app_card(app).save(staging / "README.md")
    logger.info("App written to %s: %s %s", output, trained.dataset, trained.scores)
    return output


def save_adapter(trained: TrainedApp, folder: Path) -> None:
    """The adapter's files at the top of `folder` (PEFT nests a non-default adapter under its name)."""
    scratch = folder / "scratch"
    trained.model.save_pretrained(str(scratch), selected_adapters=[trained.adapter], safe_serialization=True)
    saved = scratch / trained.adapter
    for path in (saved if saved.is_dir() else scratch).iterdir():
        if path.name != "README.md":  # PEFT's generic card; ours follows
            path.rename(folder / path.name)
    shutil.rmtree(scratch)


def app_description(task: str, trained: TrainedApp, data: str, protocol: AdapterProtocol, backbone: str) -> dict:
    return {
        "task": task,
        "id2label": dict(enumerate(trained.labels)),
        "label2id": {label: i for i, label in enumerate(trained.labels)},
        "dataset": trained.dataset,
        "data": data,
        "backbone": backbone,
        "scores": trained.scores,
        "run": trained.run,
        "protocol": asdict(protocol),
    }


def read_app(app_dir: str | os.PathLike) -> dict:
    """The app's description (task, labels, ...), or an error naming the file."""
    path = Path(app_dir) / APP_FILE
    try:
        app = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AppError(f"{path}: not a readable mtpf app description ({err}).") from err
    if app.get("task") not in APP_TASKS or not isinstance(app.get("id2label"), dict):
        raise AppError(f"{path}: expected a task in {list(APP_TASKS)} and an id2label mapping.")
    return app


CARD_KINDS = {  # task -> (pipeline tag, head class, what the labels are, slot, score rows)
    "ner": ("token-classification", "AutoModelForTokenClassification", "Entity types", "ner",
            [("test", "seqeval entity F1 (strict IOB2)", "test_f1"), ("dev", "seqeval entity F1", "dev_f1")]),
    "classification": ("text-classification", "AutoModelForSequenceClassification", "Classes", "tc",
                       [("test", "accuracy", "test_accuracy"), ("test", "macro-F1", "test_macro_f1"),
                        ("dev", "accuracy", "dev_accuracy")]),
}  # fmt: skip


def check_app_backbone(app_dir: str | os.PathLike, digest: str, backbone_dir: str | os.PathLike) -> None:
    """An app's LoRA means something only on the backbone it was trained on (`mtpf_base.json`'s digest)."""
    path = Path(app_dir) / BASE_MARKER
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("backbone_sha256")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise AppError(f"{path}: not a readable backbone marker ({err}).") from err
    if recorded != digest:
        raise AppError(f"{app_dir}: trained on another backbone than {backbone_dir} ({BASE_MARKER} differs).")


def saved_head(tensors: dict) -> tuple | None:
    """The (weight, bias) of the head an app's adapter file carries in `modules_to_save`, or None."""
    weights = {key.removeprefix("base_model.model."): value for key, value in tensors.items()}
    weight, bias = weights.get("classifier.weight"), weights.get("classifier.bias")
    return (weight.float(), bias.float()) if weight is not None and bias is not None else None


def app_card(app: dict) -> ModelCard:
    """The app's model card: what it does, its scores, and how to load it with transformers + PEFT alone."""
    pipeline_tag, head_class, label_kind, slot, rows = CARD_KINDS[app["task"]]
    scores = app["scores"]
    data = ModelCardData(library_name="peft", pipeline_tag=pipeline_tag, tags=["mtpf", app["task"], "lora"])
    labels = ", ".join(sorted({label.split("-", 1)[-1] for label in app["id2label"].values() if label != "O"}))
    table = "\n".join(f"| {split} | {metric} | {scores[key]:.2f} |" for split, metric, key in rows)
    options = ', aggregation_strategy="first"' if app["task"] == "ner" else ""
    return ModelCard(
        f"""---
{data.to_yaml()}
---

# mtpf app: {app["task"]} on {app["dataset"]}

A LoRA adapter (r={app["protocol"]["r"]}, alpha={app["protocol"]["lora_alpha"]}) plus a linear head, fine-tuned by
`python -m mtpf finetune --task {app["task"]}` on top of the MTPF backbone `{app["backbone"]}` (initialised from its
`{slot}` task-primary slot; best dev epoch {scores["best_epoch"]:g}). {label_kind}: {labels}.

| split | metric | value |
|---|---|---|
{table}

## How to load

```python
import json
from peft import PeftModel
from transformers import {head_class}, AutoTokenizer, pipeline

app = json.load(open("APP/mtpf_app.json"))
labels = {{int(i): label for i, label in app["id2label"].items()}}
model = {head_class}.from_pretrained(
    "BACKBONE", trust_remote_code=True, num_labels=len(labels), id2label=labels,
    label2id={{label: i for i, label in labels.items()}})
model = PeftModel.from_pretrained(model, "APP")
runner = pipeline("{pipeline_tag}", model=model, tokenizer=AutoTokenizer.from_pretrained("BACKBONE"){options})
```
"""
    )
