"""An app's own adapter, fine-tuned from a release: `python -m mtpf finetune RELEASE --task ner --data D --output APP`.

NER runs the very protocol `mtpf-eval` scores (`mtpf.evaluation.ner.train_ner`: LoRA r=32/alpha=64 on every layer,
initialised from the release's `ner` slot, head warm-up, dev selection, seqeval on test), so an app's test F1 is
the number the evaluation suite reports for the same settings. The app folder is a standard PEFT adapter repo:

    APP/adapter_config.json, adapter_model.safetensors   LoRA + the token head (`modules_to_save`)
    APP/mtpf_app.json                                    task, labels (id2label), dataset, scores, backbone
    APP/mtpf_base.json                                   SHA-256 of the backbone weights it was trained on
    APP/README.md                                        model card with the test scores
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from mtpf.evaluation.ner import DOWNSTREAM, NerProtocol, NerRun, train_ner
from mtpf.evaluation.ner_data import DEFAULT_DATA_ROOT, check_label_sets, load_ner_spec
from mtpf.io import atomic_directory, check_output_folder, update_json
from mtpf.models import is_release, load_model
from mtpf.release import BACKBONE_DIR, BASE_MARKER, backbone_digest

logger = logging.getLogger(__name__)

APP_FILE = "mtpf_app.json"
APP_TASKS = ("ner",)


class AppError(ValueError):
    """An app that cannot be built or loaded; the message names the file or the argument."""


def finetune_app(
    release: str | os.PathLike,
    task: str,
    data: str,
    output: str | os.PathLike,
    protocol: NerProtocol | None = None,
    seed: int = 0,
    overwrite: bool = False,
    data_root: str | os.PathLike = DEFAULT_DATA_ROOT,
) -> Path:
    """Fine-tune the app's adapter on `data` from the release and write the app folder atomically."""
    if task not in APP_TASKS:
        raise AppError(f"--task {task!r}: apps are built for {list(APP_TASKS)}.")
    if not is_release(str(release)):
        raise AppError(f"{release}: not a release folder (no {BACKBONE_DIR}/); make one with `mtpf init` or training.")
    output = check_output_folder(output, overwrite, APP_FILE, "an app", AppError)
    name, splits = load_ner_spec(data, data_root)
    labels = check_label_sets(splits, name)
    loaded = load_model(str(release))
    run, tagger = train_ner(loaded, name, splits, labels, protocol or NerProtocol(), seed=seed)
    backbone_dir = Path(release).resolve() / BACKBONE_DIR
    with atomic_directory(output) as staging:
        tagger.save_pretrained(str(staging / "scratch"), selected_adapters=[DOWNSTREAM], safe_serialization=True)
        saved = staging / "scratch" / DOWNSTREAM
        for path in (saved if saved.is_dir() else staging / "scratch").iterdir():
            if path.name != "README.md":  # PEFT's generic card; ours follows
                path.rename(staging / path.name)
        shutil.rmtree(staging / "scratch")
        update_json(staging / "adapter_config.json", lambda c: c.update(base_model_name_or_path=str(backbone_dir)))
        digest = backbone_digest(backbone_dir)
        (staging / BASE_MARKER).write_text(json.dumps({"backbone_sha256": digest}, indent=2) + "\n", encoding="utf-8")
        app = app_description(task, labels, name, data, run, protocol or NerProtocol(), str(backbone_dir))
        app["data_root"] = str(Path(data_root).resolve())  # where a local dataset name was read (export re-reads it)
        (staging / APP_FILE).write_text(json.dumps(app, indent=2) + "\n", encoding="utf-8")
        app_card(app).save(staging / "README.md")
    logger.info("App written to %s: %s test F1 %.2f", output, name, run.test_f1)
    return output


def app_description(
    task: str, labels: list[str], dataset: str, data: str, run: NerRun, protocol: NerProtocol, backbone: str
) -> dict:
    return {
        "task": task,
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "dataset": dataset,
        "data": data,
        "backbone": backbone,
        "scores": {"test_f1": run.test_f1, "dev_f1": run.dev_f1, "best_epoch": run.best_epoch},
        "run": asdict(run),
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


def app_card(app: dict) -> ModelCard:
    scores = app["scores"]
    data = ModelCardData(library_name="peft", pipeline_tag="token-classification", tags=["mtpf", "ner", "lora"])
    labels = ", ".join(sorted({label.split("-", 1)[-1] for label in app["id2label"].values() if label != "O"}))
    return ModelCard(
        f"""---
{data.to_yaml()}
---

# mtpf app: NER on {app["dataset"]}

A LoRA adapter (r={app["protocol"]["r"]}, alpha={app["protocol"]["lora_alpha"]}) plus a token-classification head,
fine-tuned by `python -m mtpf finetune` on top of the MTPF backbone `{app["backbone"]}` (initialised from its `ner`
task-primary slot). Entity types: {labels}.

| split | metric | value |
|---|---|---|
| test | seqeval entity F1 (strict IOB2) | {scores["test_f1"]:.2f} |
| dev (best epoch {scores["best_epoch"]:g}) | seqeval entity F1 | {scores["dev_f1"]:.2f} |

## How to load

```python
import json
from peft import PeftModel
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

app = json.load(open("APP/mtpf_app.json"))
labels = {{int(i): label for i, label in app["id2label"].items()}}
model = AutoModelForTokenClassification.from_pretrained(
    "BACKBONE", trust_remote_code=True, num_labels=len(labels), id2label=labels,
    label2id={{label: i for i, label in labels.items()}})
model = PeftModel.from_pretrained(model, "APP")
tagger = pipeline("token-classification", model=model, tokenizer=AutoTokenizer.from_pretrained("BACKBONE"),
                  aggregation_strategy="simple")
```
"""
    )
